"""Every error class ray_fer defines for users derives from UserError, the one type each
command line turns into a one-line message instead of a traceback."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import ray_fer
from ray_fer.errors import UserError

MODULES = [m.name for m in pkgutil.walk_packages(ray_fer.__path__, "ray_fer.")]


def test_every_error_class_of_the_package_is_a_user_error():
    defined = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, Exception)
                    and value.__module__ == name and value is not UserError):
                defined[f"{name}.{attr}"] = value
    assert len(defined) >= 8, sorted(defined)
    assert [n for n, cls in defined.items() if not issubclass(cls, UserError)] == []
