"""What a trained model looks at: attribution maps for any classifier or V/A model.

Every method maps ``(model, images, outputs)`` to one map per image and output: ``images``
are normalised (N, C, H, W) faces as the model takes them, ``outputs`` (N,) the index of
the scored output per image (a class logit, or 0 = valence / 1 = arousal for V/A models).
Maps are (N, H, W) float arrays at the input's resolution:

- :mod:`.occlusion`: the drop of the score when an N×N patch is hidden (signed, raw);
- :mod:`.gradcam`: Grad-CAM on a chosen layer, in [0, 1] per image;
- :mod:`.guided`: Guided Backpropagation and Guided Grad-CAM, in [0, 1] per image.

:mod:`.run` ties them to checkpoints, PNG grids, ``.npy`` files and TensorBoard.
"""
