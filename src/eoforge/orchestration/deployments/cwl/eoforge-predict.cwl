# OGC Application Package of `eoforge predict` (OGC Best Practice for Earth Observation
# Application Packages, 20-089): a Workflow whose one step runs the CommandLineTool in the
# eoforge CPU image. In: a staged STAC catalog (a Directory with catalog.json, its items and
# their assets), an exported model folder, optionally a bbox and a datetime interval. Out: a
# Directory that is a STAC catalog (catalog.json -> one prediction item per scene, each with
# the class-map COG and the uncertainty COG as assets).
#
#   cwltool --validate eoforge-predict.cwl
#   cwltool eoforge-predict.cwl#eoforge-predict --catalog DIR --model MODEL_DIR
#   cwltool --no-container ...   (eoforge installed on the PATH instead of the image)
cwlVersion: v1.2
$namespaces:
  s: https://schema.org/
s:softwareVersion: 0.1.0
s:name: eoforge
s:description: Sentinel-2 land-cover segmentation with an exported ONNX model, with per-pixel uncertainty.
s:license: https://spdx.org/licenses/Apache-2.0
s:codeRepository: https://github.com/eoforge/eoforge
$graph:
  - class: Workflow
    id: eoforge-predict
    label: eoforge predict
    doc: >-
      Predict a land-cover class and its uncertainty (normalised entropy, margin) for every
      pixel of every scene of a staged STAC catalog with an exported eoforge model; the result
      is a STAC catalog of prediction items with Cloud-Optimized GeoTIFF assets.
    inputs:
      catalog:
        type: Directory
        label: Input STAC catalog
        doc: A staged static STAC catalog (catalog.json, items, local assets) of Sentinel-2 L2A scenes.
      model:
        type: Directory
        label: Model
        doc: An exported eoforge model folder (model.onnx, model.json; the `model/` of a run).
      bbox:
        type: float[]?
        label: Area of interest
        doc: west, south, east, north in degrees (default the whole catalog).
      datetime:
        type: string?
        label: Time interval
        doc: RFC 3339 datetime or interval, e.g. 2023-08-01/2023-08-31 (default any time).
    outputs:
      predictions:
        type: Directory
        label: Predictions
        doc: A STAC catalog (catalog.json) of prediction items with classification and uncertainty COGs.
        outputSource: predict/predictions
    steps:
      predict:
        run: "#predict"
        in:
          catalog: catalog
          model: model
          bbox: bbox
          datetime: datetime
        out: [predictions]

  - class: CommandLineTool
    id: predict
    label: eoforge predict (one container)
    hints:
      DockerRequirement:
        dockerPull: eoforge/worker-cpu:0.1.0
      ResourceRequirement:
        coresMin: 2
        ramMin: 4096
        tmpdirMin: 4096
        outdirMin: 1024
    requirements:
      InlineJavascriptRequirement: {}
      NetworkAccess:
        networkAccess: false
      EnvVarRequirement:
        envDef:
          EOFORGE_STORE: $(runtime.tmpdir)/store
          PREFECT_HOME: $(runtime.tmpdir)/prefect
          MPLCONFIGDIR: $(runtime.tmpdir)/matplotlib
          MLFLOW_TRACKING_URI: ""
      InitialWorkDirRequirement:
        listing:
          - entryname: spec.yaml
            entry: |-
              ${
                var stac = {"catalog_dir": inputs.catalog.path, "datetime": inputs.datetime};
                if (inputs.bbox !== null) { stac["bbox"] = inputs.bbox; }
                return JSON.stringify({"stac": stac});
              }
    baseCommand: [eoforge, predict]
    arguments:
      - {prefix: --config, valueFrom: spec.yaml}
      - {prefix: --out, valueFrom: $(runtime.outdir)/predictions}
      - {prefix: --store, valueFrom: $(runtime.tmpdir)/store}
    inputs:
      catalog: Directory
      model:
        type: Directory
        inputBinding: {prefix: --model}
      bbox: float[]?
      datetime: string?
    outputs:
      predictions:
        type: Directory
        outputBinding:
          glob: predictions
