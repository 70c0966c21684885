"""Model configurations: the fields of every pretraining model and the named sizes, importable without torch so
that a command line can validate a config before it loads the models."""
