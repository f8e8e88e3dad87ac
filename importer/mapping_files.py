"""Mapping files on disk (``mappings/<name>.yaml``) -> ``Mapping`` objects: the I/O edge of mapping.

The YAML is read here, refusing duplicate keys and alias bombs, then validated by the pure
``importer.mapping.parse_mapping``. ``load_mappings`` reads a whole folder and checks the
``after:`` links between mappings (every problem across all files at once); ``find_mapping``
picks the mapping of a dropped file from its path.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

import yaml

from importer.errors import ConfigError, InputFileError
from importer.mapping import Mapping, parse_mapping
from importer.mapping_fields import did_you_mean

# YAML: a mapping file bigger than this, or using more aliases, is refused unread (no alias bomb).
MAX_MAPPING_BYTES = 1024 * 1024
MAX_YAML_ALIASES = 20


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (a header listed twice would otherwise vanish)
    and more than a few aliases: k aliases can build a structure of k**(k/levels) nodes (the
    "billion laughs"), and a mapping file needs none."""

    _aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"more than {MAX_YAML_ALIASES} aliases (*name); write the values out instead",
                    event.start_mark,
                )
        return super().compose_node(parent, index)


def _construct_mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} appears twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping_without_duplicates,
)


def _read_yaml(path: Path) -> object:
    try:
        size = path.stat().st_size
        if size > MAX_MAPPING_BYTES:
            raise ConfigError(
                f"{path}: the mapping file is {size:,} bytes; a mapping is at most {MAX_MAPPING_BYTES:,}"
            )
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the mapping file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the mapping file is not UTF-8 text ({exc.reason})") from exc
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {reason}") from exc


def load_mapping(path: Path) -> Mapping:
    """Read and validate one mapping file; its name is the file's stem."""
    return parse_mapping(path.stem, _read_yaml(path), str(path))


def load_mappings(folder: Path) -> dict[str, Mapping]:
    """Every ``*.yaml``/``*.yml`` in ``folder``; problems across all files are raised together."""
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise ConfigError(
            f"mappings folder {str(folder)!r} {what} "
            "(set paths.mappings in importer.toml or IMPORTER_PATHS__MAPPINGS)"
        )
    problems: list[str] = []
    mappings: dict[str, Mapping] = {}
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith(".")
    )
    for path in files:
        if path.stem in mappings:
            problems.append(
                f"{path}: a mapping named {path.stem!r} is already defined by {mappings[path.stem].source}"
            )
            continue
        try:
            mappings[path.stem] = load_mapping(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(_check_after(mappings))
    if problems:
        raise ConfigError(problems[0], problems=problems, path=str(folder))
    return mappings


def _check_after(mappings: dict[str, Mapping]) -> list[str]:
    problems = []
    for mapping in mappings.values():
        for name in mapping.after:
            if name not in mappings:
                known = ", ".join(sorted(mappings)) or "none"
                problems.append(
                    f"{mapping.source}: after: no mapping named {name!r}"
                    f"{did_you_mean(name, mappings)} (mappings: {known})"
                )
    # Depth-first search; a node met again while still on the path closes a cycle.
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        path.append(name)
        for following in mappings[name].after:
            if following not in mappings:
                continue
            if state.get(following) == 1:
                cycle = [*path[path.index(following) :], following]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    problems.append(
                        f"{mappings[following].source}: after: the mappings wait for each other in a cycle: "
                        + " -> ".join(cycle)
                    )
            elif following not in state:
                visit(following, path)
        path.pop()
        state[name] = 2

    for name in sorted(mappings):
        if name not in state:
            visit(name, [])
    return problems


# --- choosing the mapping of a dropped file ------------------------------------------------------


def find_mapping(
    mappings: dict[str, Mapping], relative_path: PurePath, explicit: str | None = None
) -> Mapping:
    """The mapping for a file at ``relative_path`` (relative to the inbox).

    ``explicit`` (``--mapping NAME``) wins; a file under ``<name>/`` belongs to that mapping;
    otherwise the file name is matched against every mapping's ``match`` globs, case-insensitively.
    """
    if explicit is not None:
        if explicit in mappings:
            return mappings[explicit]
        known = ", ".join(sorted(mappings)) or "none are defined"
        raise ConfigError(
            f"no mapping named {explicit!r}{did_you_mean(explicit, mappings)} (mappings: {known})"
        )
    parts = relative_path.parts
    if len(parts) > 1:
        if parts[0] in mappings:
            return mappings[parts[0]]
        folded = [m for n, m in mappings.items() if n.casefold() == parts[0].casefold()]
        if len(folded) == 1:
            return folded[0]
    name = relative_path.name
    matched = [m for m in mappings.values() if m.matches_name(name)]
    if len(matched) == 1:
        return matched[0]
    if matched:
        names = ", ".join(f"{m.name} ({', '.join(repr(g) for g in m.match)})" for m in matched)
        raise InputFileError(
            f"more than one mapping matches {name!r}: {names}; narrow their match: globs "
            f"or drop the file into inbox/<mapping>/",
            file=str(relative_path),
        )
    if not mappings:
        raise InputFileError(f"no mapping matches {name!r}: no mappings are defined", file=str(relative_path))
    tried = "; ".join(
        f"{m.name}: {', '.join(repr(g) for g in m.match) if m.match else '(no globs)'}"
        for m in sorted(mappings.values(), key=lambda m: m.name)
    )
    raise InputFileError(
        f"no mapping matches {name!r}: tried {tried}; add it to a mapping's match: "
        f"or drop it into inbox/<mapping>/",
        file=str(relative_path),
    )
