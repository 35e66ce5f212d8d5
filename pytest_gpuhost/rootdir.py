"""pytest's rootdir chosen again from the real test paths, not from our options' values."""

from __future__ import annotations

import pytest


def root_from_real_args(config: pytest.Config) -> None:
    """Node ids that do not depend on the options' values.

    pytest picks its rootdir (and ini file) before plugins add their options, so the value of
    ``--gpuhost-python /opt/x/bin/python3`` looks like a test path and /opt/x/bin becomes the
    rootdir. Decide again from the paths that are really test paths. pytest has no public API
    for this: any surprise leaves pytest's choice as it is.
    """
    import inspect

    try:
        from _pytest.config.findpaths import determine_setup

        given = {
            "inifile": config.option.inifilename,
            "override_ini": config.option.override_ini,
            "args": [str(a) for a in config.option.file_or_dir or ()],
            "rootdir_cmd_arg": config.option.rootdir or None,
            "invocation_dir": config.invocation_params.dir,
        }
        wanted = inspect.signature(determine_setup).parameters
        rootpath, inipath, inicfg = determine_setup(**{k: v for k, v in given.items() if k in wanted})[:3]
        if rootpath == config.rootpath:
            return
        config._rootpath = rootpath
        config._parser.extra_info["rootdir"] = str(rootpath)
        if inipath != config.inipath:
            config._inipath = inipath
            config._inicfg = inicfg
            config._inicache.clear()
            config._parser.extra_info["inifile"] = str(inipath)
    except Exception:
        return
