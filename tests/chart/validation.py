"""Offline validation of Kubernetes manifests (the chart's rendered output and k8s/*.yaml).

``validate_manifest(obj)`` returns error strings (empty when the object is valid), judging the object
the way ``kubectl apply --validate=strict`` against a cluster with our operators installed would:

- built-in kinds: the strict schemas of the ``kubernetes_validate`` package for every Kubernetes
  version in ``KUBE_VERSIONS`` (unknown fields are errors);
- custom resources: the CRD schema vendored in ``crd_schemas/`` (see ``crd_schemas/SOURCES.md``),
  read as the API server reads a structural schema: an object's fields not listed in ``properties``
  are unknown (an error) unless the object has ``x-kubernetes-preserve-unknown-fields: true``;
  ``x-kubernetes-int-or-string`` takes an integer or a string; ``x-kubernetes-embedded-resource``
  objects also take ``apiVersion``/``kind``/``metadata``; null in a non-``nullable`` field is dropped
  (the server prunes it) before validation; ``x-kubernetes-list-type`` ``set``/``map`` lists must
  not repeat an item/key; formats ``int32``/``int64``/``date-time`` are checked;
  ``metadata`` is checked against the Kubernetes ``ObjectMeta`` schema;
- every object: ``metadata.name`` must be a valid name and label values valid label values, as the
  API server requires.

Not checked (the API server does it): CEL rules (``x-kubernetes-validations``), admission webhooks.
An object whose apiVersion/kind has no schema here is an error, never a silent pass.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Iterable

import jsonschema
import referencing
import yaml
from kubernetes_validate import utils as kv_utils
from packaging.version import Version

from tests.chart.crd_schemas.vendor import HERE as CRD_SCHEMA_DIR
from tests.chart.crd_schemas.vendor import SOURCES

KUBE_VERSIONS = ("1.30.0", "1.33.0")

_K8S_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
_OBJECT_META_REF = _K8S_DEFS_ID + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# (group, version, kind) -> vendored schema file; the one table of what is vendored is vendor.SOURCES.
_CRDS = {(s.group, s.version, s.kind): s.out_path(CRD_SCHEMA_DIR) for s in SOURCES}

# API server name rules (k8s.io/apimachinery/pkg/util/validation).
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1035_KINDS = {("", "Service")}  # kinds whose names become DNS labels


def load_documents(text: str) -> list[dict]:
    """Every non-empty document of a multi-document YAML text; a document that is not a mapping is an error."""
    docs = []
    for index, doc in enumerate(yaml.safe_load_all(text)):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ValueError(f"YAML document {index} is a {type(doc).__name__}, not a Kubernetes object (a mapping)")
        docs.append(doc)
    return docs


def validate_manifest(obj: dict, kube_versions: Iterable[str] = KUBE_VERSIONS) -> list[str]:
    """Error strings for ``obj`` (empty when valid); see the module docstring for what is checked."""
    kube_versions = tuple(kube_versions)
    if not kube_versions:
        raise ValueError("kube_versions is empty: built-in kinds would go unchecked")
    if not isinstance(obj, dict):
        return [f"manifest is a {type(obj).__name__}, not a mapping"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version or not isinstance(kind, str) or not kind:
        return [f"manifest needs string apiVersion and kind (got apiVersion={api_version!r}, kind={kind!r})"]
    group, _, version = api_version.rpartition("/")
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    label = f"{kind}/{name or '<no name>'}"
    errors = _metadata_errors(group, kind, metadata)
    per_version: dict[str, list[str]] = {}  # error -> the Kubernetes versions it occurs in
    crd = _crd_validator(group, version, kind)
    if crd is not None:
        errors += _errors(crd, _prune_nulls(obj, crd.schema))
        for kube in kube_versions:
            for e in _errors(_object_meta_validator(_schema_dir(kube)), metadata or {}, prefix="metadata"):
                per_version.setdefault(e, []).append(kube)
    elif _is_builtin_group(group):
        for kube in kube_versions:
            validator = _builtin_validator(_schema_dir(kube), group, version, kind)
            found = ([f"no schema: {api_version} {kind} is not a built-in kind (kubernetes_validate {_kv_version()}) "
                      "and no CRD of it is vendored"]
                     if validator is None else _errors(validator, obj))
            for e in found:
                per_version.setdefault(e, []).append(kube)
    else:
        known = sorted(v for (g, v, k) in _CRDS if g == group and k == kind)
        hint = (f"vendored versions of {kind}: {', '.join(known)}" if known
                else "vendor its CRD: add it to SOURCES in tests/chart/crd_schemas/vendor.py")
        errors.append(f"no schema: {api_version} {kind} is neither a built-in kind nor a vendored CRD ({hint})")
    errors += [f"{e} (Kubernetes {', '.join(kubes)})" for e, kubes in per_version.items()]
    return [f"{label}: {e}" for e in dict.fromkeys(errors)]  # dedupe, keep order


# ---------------------------------------------------------------------------------------------
# metadata rules the API server applies whatever the kind


def _metadata_errors(group: str, kind: str, metadata) -> list[str]:
    if not isinstance(metadata, dict):
        return ["metadata: required (a mapping with at least a name)"]
    errors = []
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        errors.append("metadata.name: required (kubectl apply needs a name)")
    elif (group, kind) in _DNS1035_KINDS:
        if len(name) > 63 or not _DNS1035_LABEL.match(name):
            errors.append(f"metadata.name: {name!r} is not a DNS-1035 label (a-z, 0-9, '-', starts with a letter, at most 63)")
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain (a-z, 0-9, '-', '.', at most 253)")
    labels = metadata.get("labels") or {}
    if isinstance(labels, dict):
        for key, value in labels.items():
            prefix, _, label_name = str(key).rpartition("/")
            if len(label_name) > 63 or not _LABEL_NAME.match(label_name) or (prefix and not _DNS1123_SUBDOMAIN.match(prefix)):
                errors.append(f"metadata.labels: key {key!r} is not a valid label key")
            if isinstance(value, str) and (len(value) > 63 or not _LABEL_VALUE.match(value)):
                errors.append(f"metadata.labels.{key}: {value!r} is not a valid label value "
                              "(at most 63 of A-Z a-z 0-9 - _ ., alphanumeric at both ends)")
    return errors


# ---------------------------------------------------------------------------------------------
# built-in kinds: kubernetes_validate's strict schemas


def _kv_version() -> str:
    from kubernetes_validate.version import __version__

    return __version__


def _is_builtin_group(group: str) -> bool:
    return "." not in group or group.endswith(".k8s.io")


@functools.cache
def _schema_dir(kube_version: str) -> str:
    wanted = Version(kube_version)
    for v in kv_utils.all_versions():
        if (Version(v).major, Version(v).minor) == (wanted.major, wanted.minor):
            return f"kubernetes-json-schema/v{v}-local-strict"
    raise ValueError(f"kubernetes_validate {_kv_version()} has no schemas for Kubernetes {kube_version} "
                     f"(it has {', '.join(kv_utils.all_versions())})")


@functools.cache
def _k8s_registry(schema_dir: str) -> referencing.Registry:
    definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", schema_dir)
    return referencing.Resource.from_contents(definitions) @ referencing.Registry()


@functools.cache
def _builtin_validator(schema_dir: str, group: str, version: str, kind: str):
    # kubernetes_validate's file naming: <kind>-<first label of the group>-<version>.json, core group: <kind>-<version>.json
    stem = f"{kind.lower()}-{group.split('.')[0]}-{version}" if group else f"{kind.lower()}-{version}"
    try:
        schema = kv_utils.schema_contents(f"{schema_dir}/{stem}.json", schema_dir)
    except FileNotFoundError:
        return None
    # Files also exist for sub-types (container-v1.json): only a top-level kind names its group/version/kind.
    if {"group": group, "version": version, "kind": kind} not in schema.get("x-kubernetes-group-version-kind", []):
        return None
    registry = referencing.Resource.from_contents(schema) @ _k8s_registry(schema_dir)
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _object_meta_validator(schema_dir: str):
    return jsonschema.Draft202012Validator({"$ref": _OBJECT_META_REF}, registry=_k8s_registry(schema_dir))


# ---------------------------------------------------------------------------------------------
# custom resources: vendored CRD schemas read as structural schemas


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    seen = set()
    keys = schema.get("x-kubernetes-list-map-keys", [])
    for index, item in enumerate(instance):
        if list_type == "set":
            marker = json.dumps(item, sort_keys=True)
        elif list_type == "map" and isinstance(item, dict):
            marker = json.dumps([item.get(k) for k in keys])
        else:
            continue
        if marker in seen:
            what = "value" if list_type == "set" else f"entry with {', '.join(f'{k}={item.get(k)!r}' for k in keys)}"
            yield jsonschema.ValidationError(f"duplicate {what} at index {index} (x-kubernetes-list-type: {list_type})")
        seen.add(marker)


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**63


@_FORMATS.checks("date-time", raises=ValueError)
def _date_time(value) -> bool:
    if isinstance(value, str):
        dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    return True


_CrdValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type})


def _structural(node, *, structural: bool = True, root: bool = False):
    """A copy of a CRD schema node in which unknown fields are errors, as the API server prunes them.

    ``structural`` is False inside anyOf/oneOf/allOf/not: those only constrain values, the fields an
    object has are declared by the structural part around them.
    """
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
    if node.get("x-kubernetes-embedded-resource"):
        out["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                             "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                             **node.get("properties", {})}
    for key in ("properties", "patternProperties"):
        if key in out:
            out[key] = {name: (sub if root and name == "metadata" else _structural(sub, structural=structural))
                        for name, sub in out[key].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"], structural=structural)
    if isinstance(out.get("items"), dict):
        out["items"] = _structural(out["items"], structural=structural)
    elif isinstance(out.get("items"), list):
        out["items"] = [_structural(i, structural=structural) for i in out["items"]]
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_structural(branch, structural=False) for branch in out[key]]
    if "not" in out:
        out["not"] = _structural(out["not"], structural=False)
    is_object = out.get("type") == "object" or ("type" not in out and "properties" in out)
    if (structural and is_object and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validator(group: str, version: str, kind: str):
    path = _CRDS.get((group, version, kind))
    if path is None or not path.is_file():
        return None
    schema = _structural(json.loads(path.read_text()), root=True)
    return _CrdValidator(schema, format_checker=_FORMATS)


def _prune_nulls(value, schema):
    """Drop null fields the schema does not mark ``nullable`` (the API server prunes them; a required one is then missing)."""
    if isinstance(value, dict) and isinstance(schema, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            if item is None and not sub.get("nullable") and "null" not in _types(sub):
                continue
            out[key] = _prune_nulls(item, sub)
        return out
    if isinstance(value, list) and isinstance(schema, dict) and isinstance(schema.get("items"), dict):
        return [_prune_nulls(item, schema["items"]) for item in value]
    return value


def _types(schema: dict) -> list:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


# ---------------------------------------------------------------------------------------------


def _errors(validator, instance, prefix: str = "") -> list[str]:
    found = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_path(e.absolute_path, prefix) or '<root>'}: {_message(e)}" for e in found]


def _path(parts, prefix: str = "") -> str:
    out = prefix
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties" and error.validator_value is False:
        return error.message.replace("Additional properties are not allowed", "unknown field(s)")
    return error.message
