"""Read a training config file: YAML (safe_load semantics) with duplicate keys refused.

PyYAML keeps the last of two equal keys (`steps: 2` then `steps: 3` trains 3 steps) without a word; a config
that says two things is a mistake, so it is an error naming the file, the key and both lines.
"""
from __future__ import annotations

import os
from typing import Any

import yaml

__all__ = ["read_yaml", "YamlError"]


class YamlError(ValueError):
    """A config file that cannot be read, is not YAML, or repeats a key."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key they already hold."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    # Only keys written in this mapping count: one merged in from an anchor (<<) may be overridden on purpose.
    explicit = [k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
    seen: dict[Any, yaml.Node] = {}
    for key_node in explicit:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # construct_mapping reports unhashable keys itself
        if key in seen:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark)
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: str | os.PathLike) -> Any:
    """The document in `path` (None for an empty file). Every failure is a YamlError naming the file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError) as err:
        raise YamlError(f"cannot read config file {path!r}: {err}") from None
    except yaml.YAMLError as err:
        raise YamlError(f"config file {path!r} is not valid YAML: {err}") from None
