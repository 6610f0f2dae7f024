"""The library the DVC stages call (stages/<stage>.py): one module per concern.

Nothing here runs at import time but `quiet`, whose import is TensorFlow's (without its
start-up log); only the modules that train or load models import TensorFlow. The stages
read params.yaml and hand typed settings down; nothing below a stage's ``main()`` reads a
configuration file.
"""
