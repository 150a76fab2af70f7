"""jaxgd: backpropagation and SGD with momentum and L2, by hand, in JAX."""
