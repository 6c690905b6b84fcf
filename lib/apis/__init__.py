"""Entry points for users of trained models and of the command lines: :class:`PoseEstimator`
(``from higherpose import PoseEstimator``), loading an evaluation model, the ONNX wrapper, the
training launcher behind ``tools/dist_train.py`` and the image/video loop of ``tools/demo.py``."""
