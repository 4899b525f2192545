"""Speech commands: audio (a ROS topic or the microphone) → utterances (voice-activity detection) →
transcripts (a speech model, perception_fm.tasks.speech) → concept commands on the `concepts` topic.

Modules:
  audio       AudioData ⇄ mono float32, resampling
  vad         utterances from a stream of PCM chunks (energy, adaptive noise floor, hangover)
  intents     the one table of spoken intents (verbs, forms, fillers) the grammar and the parser are built from
  commands    transcript → concept commands ("segment the red cup and the chair" → add red cup, chair)
  grammar     the command grammar as JSGF, for recognisers that take one (PocketSphinx)
  microphone  the default microphone through sounddevice (optional dependency)
  params      the speech node's parameter table
"""

