"""mner.export: staged ONNX export, parity checks, FP16 graphs, TensorRT engines and the bundle writer.

Public API (import from the modules; this package imports nothing on its own):

* ``pipeline.export_bundle(ckpt=, out=, fp16=, int8=, trt=, resnet_weights=, detector_weights=, stages=,
  parity_data=, split=, seed=, overwrite=, progress=)`` -> ``ExportResult`` -- what ``mner-export`` runs;
* ``stages.STAGES`` -- the table of ``spec.StageSpec`` (detector, vision, tagger);
* ``stage_choice.select_for_checkpoint`` -- the stages a checkpoint exports by default (torch-free);
* ``bundle.MANIFEST_FORMAT_VERSION``, ``bundle.verify_bundle``, ``bundle.read_manifest`` and the
  manifest schema in ``bundle``'s docstring;
* ``fp16.convert_to_fp16``, ``parity.ParityReport`` / ``ParityError``, ``trt.require_tensorrt``;
* ``int8.write_int8_tagger`` / ``int8.guard_tagger`` -- the INT8 tagger and its accuracy guard;
* ``random_checkpoint.make_random_checkpoint`` -- a best.pt of a preset's size with random weights.
"""
