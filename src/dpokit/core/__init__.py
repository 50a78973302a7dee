"""The bottom layer: what every other layer may use, and nothing that needs torch or a model.

    errors.py        DpokitError, ConfigError, DataError (file, line, field): the one-line errors the CLI prints
    progress.py      progress bars or plain lines, `say` (stderr) and `report` (stdout) between their redraws
    settings.py      `setting()` fields with help and ranges; the one loader (YAML < flags < key=value), `validate`,
                     `describe_keys` (every command's --help)
    validation.py    each key's type, choices and range checked, naming the key
    sections.py      settings sections several commands share: model, LoRA, checkpoints, tracking, sampling
    model_source.py  every way to name a model (directory, hub name, .gguf, packaged short name)
    paths.py         a local path or a hub name: the one rule
"""
