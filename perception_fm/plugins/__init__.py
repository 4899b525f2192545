"""Built-in plugins. Each module here is a plain pluggy plugin (see perception_fm.hookspecs)."""

# Modules registered by the plugin manager in addition to the "perception_fm" entry points.
BUILTIN_PLUGINS = (
    "perception_fm.plugins.da3",
    "perception_fm.plugins.da3_onnx",
    "perception_fm.plugins.sam3",
    "perception_fm.plugins.asr_whisper",
    "perception_fm.plugins.asr_pocketsphinx",
    "perception_fm.plugins.sam3d_objects",
    "perception_fm.plugins.sam3d_body",
)
