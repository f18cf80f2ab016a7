"""The model as a STAC item with the Machine Learning Model (MLM) extension, and the band check.

:func:`model_item` describes an exported model (the UNet's ``model.json`` or the forest's
:func:`eoforge.export.baseline_onnx.baseline_config`): its input bands and tensor, its output classes,
framework, hyper-parameters and checksummed assets. :func:`check_model_matches` refuses to run a
model on items whose bands are not the ones it was trained on, in that order.

Checksums (``file:checksum``) are multihashes as the file extension asks: ``1220`` (sha2-256,
32 bytes) followed by the hex sha256 of the file, so ``value[4:]`` is the plain sha256.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import pystac
from pystac.extensions.file import FileExtension

from eoforge.errors import InputError
from eoforge.io.atomic import sha256_file

__all__ = [
    "MLM_SCHEMA",
    "MODEL_ITEM_NAME",
    "check_model_matches",
    "model_bands",
    "model_item",
    "training_extent",
]

#: The MLM extension version written (as pystac-ext-mlm 1.4 knows it).
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
#: File name of the model's STAC item inside the model directory (ADR 0001).
MODEL_ITEM_NAME = "model-item.json"

_MLM_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]+[a-zA-Z0-9]$")  # the MLM schema's pattern
_CLASS_NAME = re.compile(r"^[0-9A-Za-z_-]+$")  # what the classification extension allows
_ARCHITECTURES = {"unet": "U-Net", "random-forest": "Random Forest"}
_FRAMEWORKS = {"unet": "PyTorch", "random-forest": "scikit-learn"}
_SEMVER = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]*)?$")
_OPEN_START, _OPEN_END = "1900-01-01T00:00:00Z", "9999-12-31T23:59:59Z"


def _checksum(path: Path) -> str:
    return "1220" + sha256_file(path)


def _read_config(model_json: Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(model_json, Mapping):
        return dict(model_json)
    path = Path(model_json)
    if not path.is_file():
        raise InputError(f"model description '{path}' does not exist; run the train stage first.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"'{path}' is not valid JSON ({exc}); retrain the model.") from exc
    if not isinstance(config, dict):
        raise InputError(f"'{path}' must hold a JSON object (model.json).")
    return config


def _onnx_channels(onnx_path: Path) -> int | None:
    """The static band count of the ONNX ``image`` input (None if dynamic)."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common public base class
        raise InputError(f"'{onnx_path}' is not an ONNX model ({exc}); re-export it.") from exc
    for value in model.graph.input:
        if value.name == "image":
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
            return None
    raise InputError(f"ONNX model '{onnx_path}' has no input 'image' (ADR 0001); re-export it.")


def _safetensors_parameters(path: Path) -> int:
    """Number of floating-point values stored in a safetensors file (read from its header)."""
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size < 100_000_000:
            raise InputError(f"'{path}' is not a safetensors file; retrain the model.")
        header = json.loads(fh.read(size))
    total = 0
    for name, tensor in header.items():
        if name != "__metadata__" and str(tensor.get("dtype", "")).startswith(("F", "BF")):
            count = 1
            for d in tensor.get("shape", []):
                count *= int(d)
            total += count
    return total


def training_extent(
    items: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Any] | None, list[float] | None, str, str]:
    """Footprint and time range of the items a model was trained on, for its STAC item.

    Returns:
        (geometry, bbox, start_datetime, end_datetime): the bbox polygon around every item's
        bbox and the earliest / latest datetime; ``(None, None, open range)`` without items.
    """
    boxes = [it["bbox"] for it in items if it.get("bbox")]
    times = sorted(
        str(t)
        for it in items
        for t in (
            it.get("properties", {}).get("datetime"),
            it.get("properties", {}).get("start_datetime"),
            it.get("properties", {}).get("end_datetime"),
        )
        if t
    )
    start, end = (times[0], times[-1]) if times else (_OPEN_START, _OPEN_END)
    if not boxes:
        return None, None, start, end
    west = min(float(b[0]) for b in boxes)
    south = min(float(b[1]) for b in boxes)
    east = max(float(b[-2]) for b in boxes)
    north = max(float(b[-1]) for b in boxes)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}, [west, south, east, north], start, end


def model_item(
    onnx_path: Path,
    model_json: Path | Mapping[str, Any],
    bands: Sequence[str],
    classes: Sequence[str],
    *,
    weights_path: Path | None = None,
    name: str | None = None,
    item_id: str | None = None,
    training_items: Sequence[Mapping[str, Any]] = (),
    batch_size_suggestion: int | None = None,
    normalisation_in_graph: bool = True,
) -> dict[str, Any]:
    """The STAC item (MLM extension 1.4) of an exported model, ready for ``write_json_atomic``.

    Properties: ``mlm:name``, ``mlm:architecture`` (``U-Net`` / ``Random Forest``),
    ``mlm:tasks`` ``["semantic-segmentation"]``, ``mlm:framework`` (what trained it: ``PyTorch``
    or ``scikit-learn``) and its version, ``mlm:total_parameters`` (from the safetensors header),
    ``mlm:pretrained`` false, ``mlm:input`` (one input ``image``: the bands in order, float32
    ``[-1, C, -1, -1]`` batch/channel/height/width), ``mlm:output`` (``logits`` float32
    ``[-1, K, -1, -1]`` batch/class/height/width with ``classification:classes``) and
    ``mlm:hyperparameters`` (training hyper-parameters, ``band_mean`` / ``band_std``). Assets, each
    with ``file:size`` and ``file:checksum``: ``model`` (the ONNX file, roles ``mlm:model``,
    ``mlm:artifact_type`` ``onnx``, asset-level framework ``ONNX``), ``weights`` (safetensors, if
    given) and ``config`` (``model.json`` if given as a path). The hrefs are the file names, so the
    item belongs in the same folder (``model/model-item.json``).

    Normalisation: eoforge puts ``(x - band_mean) / band_std`` inside the graph (ADR 0001), so
    the input is raw DN and ``value_scaling`` is ``null`` (a consumer that applied a z-score
    itself would normalise twice); the statistics are recorded in ``mlm:hyperparameters`` and the
    input's description. With ``normalisation_in_graph=False`` they become a per-band z-score
    ``value_scaling``.

    Args:
        onnx_path: the exported ONNX model.
        model_json: ``model.json`` (path or dict) of the network, or
            :func:`eoforge.export.baseline_onnx.baseline_config` of the forest.
        bands: the model's input bands, in order (must equal the record's ``bands``).
        classes: output class names, index = class value (must equal the record's ``classes``).
        weights_path: the ``model.safetensors`` the ONNX was exported from (None: no asset).
        name: ``mlm:name`` (default ``eoforge-<architecture>``).
        item_id: the item id (default ``<name>-<first 12 hex of the ONNX sha256>``).
        training_items: STAC items of the training data: the item's footprint and time range
            and ``derived_from`` links (their ``self`` links).
        batch_size_suggestion: ``mlm:batch_size_suggestion`` (e.g. ``infer.batch_size``).
        normalisation_in_graph: whether the ONNX graph normalises its input itself.

    Returns:
        The item as a JSON-serialisable dict (no self link; asset hrefs relative).

    Raises:
        InputError: a missing file, a record that disagrees with ``bands`` / ``classes`` or with
            the ONNX input, or names the MLM / classification schemas do not allow.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"ONNX model '{onnx_path}' does not exist; run the export stage first.")
    config = _read_config(model_json)
    band_list, class_list = list(bands), list(classes)
    for key, given in (("bands", band_list), ("classes", class_list)):
        recorded = config.get(key)
        if recorded is not None and list(recorded) != given:
            raise InputError(
                f"the model record lists {key} {list(recorded)} but {given} were given for "
                f"'{onnx_path}'; describe the model with the {key} it was trained on."
            )
    if not band_list:
        raise InputError(f"model '{onnx_path}' needs at least one input band.")
    bad = [c for c in class_list if not _CLASS_NAME.match(c)]
    if bad or not class_list or len(set(class_list)) != len(class_list):
        raise InputError(
            f"classes {class_list} must be unique names of letters, digits, '-' or '_' "
            f"(invalid: {bad}); fix labels.classes."
        )
    channels = _onnx_channels(onnx_path)
    if channels is not None and channels != len(band_list):
        raise InputError(
            f"ONNX model '{onnx_path}' takes {channels} bands but {len(band_list)} bands "
            f"{band_list} were given; pass the bands it was exported with."
        )

    arch = config.get("architecture", {})
    arch_name = str(arch.get("name", "unknown")) if isinstance(arch, Mapping) else str(arch)
    mlm_name = name or f"eoforge-{arch_name}"
    if not _MLM_NAME.match(mlm_name):
        raise InputError(
            f"model name '{mlm_name}' must start with a letter, end with a letter or digit and "
            "hold only letters, digits, '_', '.' or '-' (MLM mlm:name)."
        )
    onnx_checksum = _checksum(onnx_path)
    geometry, bbox, start, end = training_extent(training_items)

    item = pystac.Item(
        id=item_id or f"{mlm_name}-{onnx_checksum[4:16]}",
        geometry=geometry,
        bbox=bbox,
        datetime=None,
        properties={
            "start_datetime": start,
            "end_datetime": end,
            "description": f"eoforge {arch_name} for semantic segmentation of {band_list} "
            f"into {class_list}.",
        },
    )
    props = item.properties
    framework = str(config.get("framework") or _FRAMEWORKS.get(arch_name, "unknown"))
    version = str(config.get("framework_version") or config.get("torch_version") or "")
    props.update(
        {
            "mlm:name": mlm_name,
            "mlm:architecture": _ARCHITECTURES.get(arch_name, arch_name),
            "mlm:tasks": ["semantic-segmentation"],
            "mlm:framework": framework,
            "mlm:pretrained": False,
            "mlm:pretrained_source": None,
            "mlm:accelerator": None,
            "mlm:accelerator_constrained": False,
            "mlm:input": [_model_input(band_list, config, normalisation_in_graph)],
            "mlm:output": [_model_output(class_list)],
        }
    )
    # MLM requires the input bands described on the item too (STAC 1.1 common ``bands``)
    props["bands"] = [{"name": b} for b in band_list]
    if _SEMVER.match(version):
        props["mlm:framework_version"] = version
    if batch_size_suggestion:
        props["mlm:batch_size_suggestion"] = int(batch_size_suggestion)
    hyper = _hyperparameters(config)
    if hyper:
        props["mlm:hyperparameters"] = hyper

    model_asset = pystac.Asset(
        href=f"./{onnx_path.name}",
        media_type="application/octet-stream; framework=onnx; profile=onnx",
        roles=["mlm:model", "model", "data"],
        title="ONNX model: raw DN image -> class logits",
        extra_fields={
            "mlm:artifact_type": "onnx",
            "mlm:framework": "ONNX",
            "mlm:framework_version": onnx.__version__,
            "bands": [{"name": b} for b in band_list],
        },
    )
    item.add_asset("model", model_asset)
    _add_file_fields(model_asset, onnx_path, onnx_checksum)
    if weights_path is not None:
        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise InputError(f"model weights '{weights_path}' do not exist; retrain the model.")
        props["mlm:total_parameters"] = _safetensors_parameters(weights_path)
        weights = pystac.Asset(
            href=f"./{weights_path.name}",
            media_type="application/octet-stream; framework=pytorch; profile=safetensors",
            roles=["mlm:weights", "weights"],
            title="PyTorch state dict (safetensors); architecture in model.json",
            # no mlm:artifact_type: MLM allows it on ``mlm:model`` assets only
        )
        item.add_asset("weights", weights)
        _add_file_fields(weights, weights_path, _checksum(weights_path))
    if not isinstance(model_json, Mapping):
        config_path = Path(model_json)
        config_asset = pystac.Asset(
            href=f"./{config_path.name}",
            media_type=pystac.MediaType.JSON,
            roles=["metadata"],
            title="Architecture, hyper-parameters, band statistics and training history",
        )
        item.add_asset("config", config_asset)
        _add_file_fields(config_asset, config_path, _checksum(config_path))

    item.stac_extensions.append(MLM_SCHEMA)
    for source in training_items:
        href = next(
            (
                link.get("href")
                for link in source.get("links", [])
                if link.get("rel") in ("self", "canonical") and link.get("href")
            ),
            None,
        )
        if href:
            item.add_link(
                pystac.Link(
                    rel=pystac.RelType.DERIVED_FROM,
                    target=str(href),
                    media_type=pystac.MediaType.GEOJSON,
                    title=f"training scene {source.get('id')}",
                )
            )
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def _add_file_fields(asset: pystac.Asset, path: Path, checksum: str) -> None:
    file_ext = FileExtension.ext(asset, add_if_missing=True)
    file_ext.size = path.stat().st_size
    file_ext.checksum = checksum


def _model_input(
    bands: list[str], config: Mapping[str, Any], normalisation_in_graph: bool
) -> dict[str, Any]:
    mean, std = config.get("band_mean"), config.get("band_std")
    stats_known = isinstance(mean, list) and isinstance(std, list) and len(mean) == len(bands)
    description = (
        "Raw Sentinel-2 L2A surface reflectance DN (x 1e4) as float32, bands in this order; "
        "height and width any multiple of 8 (eoforge.inference.predict slides windows over a scene)."
    )
    scaling: list[dict[str, Any]] | None = None
    if stats_known and normalisation_in_graph:
        description += (
            " The z-score normalisation with the training statistics (mlm:hyperparameters "
            "band_mean / band_std) is inside the model: do not normalise the input."
        )
    elif stats_known:
        assert isinstance(mean, list) and isinstance(std, list)
        scaling = [
            {"type": "z-score", "mean": float(m), "stddev": float(s)}
            for m, s in zip(mean, std, strict=True)
        ]
    return {
        "name": "image",
        "bands": list(bands),
        "input": {
            "shape": [-1, len(bands), -1, -1],
            "dim_order": ["batch", "channel", "height", "width"],
            "data_type": "float32",
        },
        "description": description,
        "value_scaling": scaling,
        "resize_type": None,
        "pre_processing_function": None,
    }


def _model_output(classes: list[str]) -> dict[str, Any]:
    return {
        "name": "logits",
        "tasks": ["semantic-segmentation"],
        "result": {
            "shape": [-1, len(classes), -1, -1],
            "dim_order": ["batch", "class", "height", "width"],
            "data_type": "float32",
        },
        "description": "Class logits per pixel (log-probabilities for the random forest); the "
        "class map is the argmax of the softmax blended over overlapping windows.",
        # the classification v1.1 schema MLM v1.4 refers to requires a description
        "classification:classes": [
            {"value": i, "name": n, "description": n} for i, n in enumerate(classes)
        ],
        "post_processing_function": {
            "format": "python",
            "expression": "eoforge.inference.predict:predict_scene",
        },
    }


def _hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    hyper: dict[str, Any] = {}
    params = config.get("hyper_params")
    if isinstance(params, Mapping):
        hyper.update({str(k): v for k, v in params.items() if re.match(r"^[0-9a-zA-Z_.-]+$", k)})
    for key in ("band_mean", "band_std", "chip_size", "ignore_index"):
        if config.get(key) is not None:
            hyper[key] = config[key]
    arch = config.get("architecture")
    if isinstance(arch, Mapping):
        hyper.update({f"architecture.{k}": v for k, v in arch.items() if k != "name"})
    return hyper


def model_bands(model_item: Mapping[str, Any]) -> list[str]:
    """The input bands of a model item (``mlm:input[0].bands``), names in order.

    Raises:
        InputError: the item has no MLM input with bands.
    """
    props = model_item.get("properties", {})
    inputs = props.get("mlm:input") if isinstance(props, Mapping) else None
    if not inputs or not isinstance(inputs, list) or "bands" not in inputs[0]:
        raise InputError(
            f"model item '{model_item.get('id')}' has no mlm:input with bands; regenerate it "
            "with eoforge.export.mlm.model_item."
        )
    return [b["name"] if isinstance(b, Mapping) else str(b) for b in inputs[0]["bands"]]


def check_model_matches(model_item: Mapping[str, Any], bands: Sequence[str]) -> None:
    """Refuse to run a model on bands other than those it was trained on, in that order.

    Args:
        model_item: the model's STAC item (from :func:`model_item`).
        bands: the band (asset) names the scenes provide, in the order they are stacked.

    Raises:
        InputError: naming the model and both band lists when they differ.
    """
    expected = model_bands(model_item)
    given = list(bands)
    if given == expected:
        return
    props = model_item.get("properties", {})
    name = props.get("mlm:name") if isinstance(props, Mapping) else None
    missing = [b for b in expected if b not in given]
    hint = (
        f"the scenes lack {missing}"
        if missing
        else "the same bands are there but in another order"
        if sorted(given) == sorted(expected)
        else f"the scenes have extra bands {[b for b in given if b not in expected]}"
    )
    raise InputError(
        f"model '{name}' (item '{model_item.get('id')}') takes bands {expected}, in this order, "
        f"but the items provide {given}: {hint}. Set stac.bands to {expected} or use a model "
        "trained on these bands."
    )
