"""Everything built on the core (``pdnsr``): the command lines, data preparation, export, the experiment and the
demo, the web page. A tool imports the core; the core never imports a tool (``tests/test_imports.py``)."""
