"""The served models: each loaded once (``OnnxModel``), named, warmed up and given its
micro-batcher; their metadata for ``/v1/models``. Torch-free."""
from __future__ import annotations

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.media.resize import resize_kernel

from .batcher import MicroBatcher
from .config import ServeConfig
from .guard import ApiError
from .metrics import Metrics
from .runtime import OnnxModel


class ModelPool:
    """``models[name]`` and ``batchers[name]`` of every served model. A model is served under its
    card's name; a student and its expert (one name) under their file stems."""

    def __init__(self, cfg: ServeConfig, metrics: Metrics):
        self.cfg, self.metrics = cfg, metrics
        loaded = [OnnxModel(path, providers=cfg.providers, threads=cfg.threads, runtime=cfg.runtime)
                  for path in cfg.models]
        self.models: dict[str, OnnxModel] = {}
        for m in loaded:
            shared = sum(x.name == m.name for x in loaded) > 1
            name = m.path.name.removesuffix(".onnx") if shared else m.name
            if name in self.models:
                raise InputError(f"two models would both be served as {name!r} ({self.models[name].path} and "
                                 f"{m.path}); serve them from separate processes")
            self.models[name] = m
        self.batchers: dict[str, MicroBatcher] = {}

    def start(self) -> None:
        for m in self.models.values():
            m.run(m.sample_input(1))  # a runtime's first run allocates and plans; not on a user's request
        for name, m in self.models.items():
            self.batchers[name] = MicroBatcher(m, name, self.cfg.max_batch_size, self.cfg.max_delay_ms / 1e3,
                                               self.metrics)
            self.batchers[name].start()

    async def stop(self) -> None:
        for b in self.batchers.values():
            await b.stop()

    def pick(self, name: str | None) -> str:
        """The served name a request means: ``name``, or the only model; 400/404 otherwise."""
        if name is None or name == "":
            if len(self.models) == 1:
                return next(iter(self.models))
            raise ApiError(400, "missing_field", f"field 'model' is required when several models are served: "
                                                 f"{sorted(self.models)}")
        if name not in self.models:
            raise ApiError(404, "unknown_model", f"no model named {name!r}; served: {sorted(self.models)}")
        return name

    def info(self, name: str) -> dict:
        m = self.models[name]
        inputs = [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype, "layout": i.layout, "expert": i.expert,
                   "preprocess": i.preprocess.to_dict(), "resize_kernel": resize_kernel(i.preprocess),
                   "views_in_graph": i.views} for i in m.card.inputs]
        return {"name": name, "kind": m.kind, "file": m.path.name, "dataset": m.card.dataset, "arch": m.card.arch,
                "num_classes": len(m.categories), "categories": m.categories,
                "preprocess": inputs[0]["preprocess"], "views_in_graph": inputs[0]["views_in_graph"],
                "input": inputs[0], "inputs": inputs, "output": m.output_name,
                "precision": m.card.precision, "runtime": m.runtime, "runtime_info": m.runtime_info,
                "providers": m.runtime_info.get("providers", []),
                "max_batch_size": self.cfg.max_batch_size, "max_delay_ms": self.cfg.max_delay_ms}
