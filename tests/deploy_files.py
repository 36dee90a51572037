"""Reading the deployment files the way their tools would, without the tools: what test_deploy checks.

No docker, kubectl, kustomize or registry is available to the tests, so this module does the
small part of each that the checks need: render a kustomization (resources, namespace, images and
JSON 6902 patches, and nothing else: a field it cannot render fails the test instead of being
skipped), interpolate a compose file, split a Dockerfile into stages, and walk a command line
through the real click commands to find flags they do not define.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_BASE = DEPLOY / "k8s" / "base"
K8S_OVERLAY = DEPLOY / "k8s" / "overlays" / "example"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

Manifest = dict[str, Any]

# -- YAML and kustomize --------------------------------------------------------------------------

KUSTOMIZATION_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "images", "patches"})
"""What :func:`render` implements; a kustomization using anything else fails instead of rendering wrong."""


def load_all(path: Path) -> list[Manifest]:
    """Every document of a YAML file (empty documents left out)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> Manifest:
    [doc] = load_all(path)
    assert isinstance(doc, dict), f"{path}: not a mapping"
    return doc


def render(directory: Path) -> list[Manifest]:
    """The objects ``kubectl apply -k directory`` would send, for the fields in KUSTOMIZATION_FIELDS."""
    kustomization = load_one(directory / "kustomization.yaml")
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}: kustomization fields the tests cannot render: {sorted(unknown)}"
    assert kustomization["kind"] == "Kustomization"
    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else [copy.deepcopy(o) for o in load_all(path)]
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"target", "patch"}, f"only inline JSON 6902 patches with a target: {patch}"
        assert set(patch["target"]) <= {"kind", "name"}, patch["target"]
        matched = [o for o in objects if all(_field(o, k) == v for k, v in patch["target"].items())]
        assert matched, f"{directory}: patch target {patch['target']} matches nothing"
        for obj in matched:
            json_patch(obj, yaml.safe_load(patch["patch"]))
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in containers(obj):
                container["image"] = _renamed(container["image"], image)
    if "namespace" in kustomization:
        for obj in objects:
            obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def _field(obj: Manifest, key: str) -> Any:
    return obj["metadata"]["name"] if key == "name" else obj[key]


def _renamed(image: str, rule: Mapping[str, str]) -> str:
    """kustomize's images transformer on one reference: a matching name gets newName and newTag."""
    name, tag = image, ""
    slash = image.rfind("/")
    if image.rfind(":") > slash:
        name, tag = image.rsplit(":", 1)
    if name != rule["name"]:
        return image
    tag = rule.get("newTag", tag)
    return rule.get("newName", name) + (f":{tag}" if tag else "")


def json_patch(doc: Any, ops: Sequence[Mapping[str, Any]]) -> None:
    """Apply JSON 6902 ``add``, ``replace`` and ``remove`` operations to ``doc`` in place."""
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        kind = op["op"]
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if kind == "add":
                target.insert(index, op["value"])
            elif kind == "replace":
                target[index] = op["value"]
            elif kind == "remove":
                del target[index]
            else:
                raise AssertionError(f"unsupported patch op {kind}")
            continue
        if kind in ("replace", "remove"):
            assert last in target, f"{op['path']}: nothing to {kind}"
        if kind in ("add", "replace"):
            target[last] = op["value"]
        elif kind == "remove":
            del target[last]
        else:
            raise AssertionError(f"unsupported patch op {kind}")


def pod_spec(obj: Manifest) -> Manifest | None:
    """The pod template's spec of a workload, None for other kinds."""
    template = obj.get("spec", {}).get("template")
    return template["spec"] if isinstance(template, dict) else None


def containers(obj: Manifest) -> list[Manifest]:
    spec = pod_spec(obj)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]


def by_kind(objects: Sequence[Manifest], kind: str) -> Manifest:
    [obj] = [o for o in objects if o["kind"] == kind]
    return obj


def container_argv(container: Manifest) -> list[str]:
    """The command line of a container (its image sets no ENTRYPOINT, so command comes first)."""
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv, f"container {container['name']}: command or args must name the program"
    return [str(a) for a in argv]


def flag_value(argv: Sequence[str], flag: str) -> str:
    """The value of ``--flag=VALUE`` or ``--flag VALUE`` in ``argv``."""
    for i, arg in enumerate(argv):
        if arg == flag:
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {list(argv)}")


# -- compose -------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}`` and ``${VAR:-default}``; any other use of ``$`` is refused."""
    out = _VARIABLE.sub(lambda m: env.get(m["name"]) or (m["default"] or ""), text)
    assert "$" not in out, "a $ form the tests do not interpolate (use ${VAR} or ${VAR:-default})"
    return out


def load_compose(env: Mapping[str, str] | None = None) -> Manifest:
    """deploy/compose.yaml as compose reads it with ``env`` (default: no variable set)."""
    doc = yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), env or {}))
    assert isinstance(doc, dict)
    return doc


def service_argv(service: Manifest) -> list[str]:
    """A compose service's command line (entrypoint, then command), in exec form."""
    argv: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key, [])
        assert isinstance(value, list), f"{key} in exec form (a list), so no shell parses it"
        argv += [str(v) for v in value]
    return argv


def seconds(duration: str) -> float:
    """A compose duration (``30s``, ``1m30s``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- Dockerfiles ---------------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage of a Dockerfile: its base image (ARGs resolved) and its instructions."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]

    def last(self, instruction: str) -> str | None:
        values = self.all(instruction)
        return values[-1] if values else None


def stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """The global ARGs (with their defaults) and the stages of a Dockerfile."""
    parser = DockerfileParser(path=str(path))
    global_args: dict[str, str] = {}
    found: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            words = value.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base, name))
        elif not found:
            assert instruction == "ARG", f"{path}: only ARG may come before the first FROM"
            key, _, default = value.partition("=")
            global_args[key] = default
        else:
            found[-1].instructions.append((instruction, value))
    return global_args, found


def exec_form(value: str) -> list[str]:
    """The argv of a CMD, ENTRYPOINT or HEALTHCHECK CMD in exec (JSON) form."""
    import json

    argv = json.loads(value)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), value
    return argv


def key_values(value: str) -> dict[str, str]:
    """``ENV``/``ARG``/``LABEL`` values (``A=1 B="x y"``) as a dict."""
    return dict(word.partition("=")[::2] for word in shlex.split(value))


# -- command lines against the real click commands -----------------------------------------------


def _option(command: click.Command, name: str) -> click.Option | None:
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def unknown_flags(command: click.Command, argv: Sequence[str]) -> list[str]:
    """Flags in ``argv`` that ``command`` and the subcommands it names lack, as ``"prog --flag"``.

    ``argv[0]`` is the program. Values are not converted (paths named in a manifest exist only
    in the container); a subcommand that does not exist counts as unknown too.
    """
    unknown: list[str] = []
    current = command
    where = Path(argv[0]).name
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, has_value, _ = arg.partition("=")
            option = _option(current, name)
            if option is None:
                unknown.append(f"{where} {name}")
            elif not option.is_flag and not has_value:
                i += 1  # the option's value
        elif isinstance(current, click.Group):
            sub = current.commands.get(arg)
            if sub is None:
                unknown.append(f"{where}: no subcommand {arg!r}")
                break
            current = sub
            where += f" {arg}"
        i += 1
    return unknown


def envvars(command: click.Command) -> set[str]:
    """The environment variables the options of ``command`` (and its subcommands) read."""
    names: set[str] = set()
    stack = [command]
    while stack:
        cmd = stack.pop()
        for param in cmd.params:
            if isinstance(param, click.Option) and param.envvar:
                names.update([param.envvar] if isinstance(param.envvar, str) else param.envvar)
        if isinstance(cmd, click.Group):
            stack.extend(cmd.commands.values())
    return names


# -- systemd units -------------------------------------------------------------------------------


def unit(path: Path) -> tuple[list[str], dict[str, str]]:
    """A unit's ExecStart argv (``%`` specifiers kept) and its ``Environment=`` variables."""
    argv: list[str] = []
    env: dict[str, str] = {}
    # A line ending in a backslash goes on on the next one.
    for line in path.read_text().replace("\\\n", " ").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "ExecStart":
            argv = shlex.split(value)
        elif key == "Environment":
            name, _, setting = value.partition("=")
            env[name] = setting
    assert argv, f"{path}: no ExecStart"
    return argv, env


def iter_strings(value: Any) -> Iterator[str]:
    """Every string inside nested lists and dicts (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from iter_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_strings(item)
