"""One module per experiment, each with ``run(config, out) -> results`` and ``summary(results)``."""
