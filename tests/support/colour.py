"""A hand-built colour classifier (ONNX) and solid-colour videos: timelines whose right answer is known."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from jedi_deploy.contracts.model_card import InputSpec, ModelCard, embed_card
from jedi_deploy.contracts.preprocess import Preprocess

COLOURS = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}


def colour_model(path: Path, short_side: int = 0) -> Path:
    """A hand-built ONNX classifier: logits = mean R, G, B of the clip / 20 (categories red, green, blue)."""
    import onnx
    from onnx import TensorProto, helper

    pre = Preprocess(4, "clip", 1, short_side, 16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = helper.make_tensor_value_info("video", TensorProto.FLOAT, ["batch", 4, 3, 16, 16])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05])
    nodes = [helper.make_node("ReduceMean", ["video"], ["m"], axes=[1, 3, 4], keepdims=0),
             helper.make_node("Mul", ["m", "scale"], ["logits"])]
    model = helper.make_model(helper.make_graph(nodes, "colour", [x], [y], [scale]),
                              opset_imports=[helper.make_opsetid("", 17)])
    card = ModelCard(kind="expert", name="colour", dataset="synthetic", arch="hand", categories=tuple(COLOURS),
                     inputs=(InputSpec("video", "float32", ("batch", 4, 3, 16, 16), "NTCHW", pre),))
    embed_card(model, card)
    onnx.save(model, str(path))
    return path


def coloured_video(path: Path, plan: list[tuple[str, float]], fps: int = 4, size=(48, 32)) -> Path:
    """An H.264 video of solid colours: ``plan`` = [(colour, seconds), ...] in order."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = {"preset": "ultrafast"}
        for colour, secs in plan:
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[:] = COLOURS[colour]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for _ in range(int(round(secs * fps))):
                for pk in s.encode(frame):
                    c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    return path
