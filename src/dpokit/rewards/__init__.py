"""One notion of a reward, `fn(prompts, completions) -> scores`, and what is built from rewards alone.

    sources.py       VADER, module:function, a function in a file (path:function), a classifier, a dpokit rm dir
    reward_model.py  dpokit rm's model: a scalar head on each response's last token; scoring, centring
    preferences.py   K samples per prompt from πref, scored -> all pairs + ranked lists (the paper's recipe)
"""
