// MathJax 2 (served from the site itself: docs/hooks.py copies it from jupyter-server-mathjax),
// set to typeset $...$ and $$...$$ in the tutorials' markdown and \(...\) in the pages'.
window.MathJax = {
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]], processEscapes: true},
  "HTML-CSS": {availableFonts: [], webFont: "STIX-Web", imageFont: null},  // the fonts the package carries
  SVG: {font: "STIX-Web"},
  showMathMenu: false,
};
