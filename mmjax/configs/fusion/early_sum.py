"""early_sum on the built-in audio-video set, whose tokens are aligned in time: video tubelets
(1, 16, 16) and spectrogram patches (8 frames, 8 mel bins) both give 4 tokens per time step,
time-major, so token i of each modality covers the same moment (32 + [CLS] each)."""
from mmjax.configs import default


def get_config():
  c = default.get_config()
  c.model.fusion = "early_sum"
  c.model.depth.update({"unimodal": 1, "joint": 3, "post": 0, "cross": 0})
  c.model.modalities = {
      "video": {"kind": "video", "tubelet": (1, 16, 16), "grid": (8, 2, 2),
                "input_shape": (8, 32, 32, 3)},
      "audio": {"kind": "audio", "patch": (8, 8), "grid": (8, 4), "input_shape": (64, 32)},
  }
  c.data.update({"task": "audio_video", "num_frames": 8, "audio_frames": 64, "mel_bins": 32})
  c.eval.evaluators = ("retrieval", "mim")  # no text modality: no prompts or captions
  return c
