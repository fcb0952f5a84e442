"""The training loss at answer positions only, without ever holding [tokens, vocab] logits (`train.answer_loss`).

    loss_fn = AnswerLoss.attach(model)        # None when the model's head is not a plain linear layer
    with loss_fn.capture():
        outputs = model(**inputs, logits_to_keep=1)   # the model computes logits for one position only
    loss = loss_fn(outputs, labels, num_items_in_batch=n)   # what the model's own loss would be; same gradients

Why: math OCR trains on short answers behind a long prompt (instruction + image tokens), and the language model's
vocabulary is large (152k entries for Qwen2-VL). The model's own loss computes logits at every position, prompt
included, and keeps them in bfloat16 plus a float32 copy for the cross-entropy: at batch 32 x ~300 tokens that is
~9,600 x 152k x 6 bytes = 8.7 GB of activations, most of it for positions whose label is ignored. Here the last
hidden states are taken from the decoder's output (a forward hook; the model is asked for the logits of one
position), the positions with a label are gathered (typically a fifth of the sequence), and the head + softmax
cross-entropy run over them in chunks of rows (`_ROW_ELEMENTS`), computing the gradient of each chunk at once
(a fused linear cross-entropy): only the [answer tokens, hidden] gradient is kept for the backward pass. Liger's
and cut-cross-entropy's fused kernels do the same with Triton; this one is plain torch, so it runs and is tested
on a CPU, and it needs no extra package on the GPU machine.

Equivalence: the loss and every gradient equal the model's own loss (`ForCausalLMLoss`: shift by one, ignore
-100, sum / `num_items_in_batch`, else mean) within float rounding (tests/test_answer_loss.py, every family with
a tiny model, LoRA and full fine-tuning).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from texocr.models.base import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

_ROW_ELEMENTS = 1 << 26
"""Logit elements per chunk (64 M floats, 256 MB in float32): 441 rows of a 152k vocabulary at once."""


class AnswerLoss:
    """A Trainer `compute_loss_func` (see the module docstring); `capture()` arms the decoder hook for one forward."""

    def __init__(self, head: Any, decoder: Any) -> None:
        self.head = head  # the output projection (lm_head): weight [V, D]
        self._armed = False
        self._hidden: torch.Tensor | None = None
        self._handle = decoder.register_forward_hook(self._keep)

    @classmethod
    def attach(cls, model: Any) -> AnswerLoss | None:
        """The loss for `model` (a transformers model, possibly wrapped by peft), or None when its logits are not
        simply `lm_head(decoder output)`: a bias, a soft cap (Gemma 2), no decoder to hook, no `logits_to_keep`."""
        import inspect

        import torch

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        if type(head) is not torch.nn.Linear or head.bias is not None or decoder is None:
            return None
        text_cfg = getattr(base.config, "text_config", base.config)
        if getattr(text_cfg, "final_logit_softcapping", None) or getattr(base.config, "final_logit_softcapping", None):
            return None
        if "logits_to_keep" not in inspect.signature(base.forward).parameters:
            return None
        return cls(head, decoder)

    def _keep(self, module: Any, args: Any, output: Any) -> None:
        if self._armed:
            self._hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Keep the decoder's output of the forward passes inside this block (only the training step's)."""
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        """The mean (or sum / `num_items_in_batch`) next-token cross-entropy over positions with a label."""
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError("AnswerLoss: no decoder output was captured (call the model inside capture())")
        h = hidden[:, :-1]  # [B, T-1, D]: position t predicts label t+1
        target = labels[:, 1:].to(h.device)  # [B, T-1]
        keep = target != IGNORE_INDEX
        total = linear_cross_entropy(h[keep], self.head.weight, target[keep])  # [] summed over answer tokens
        if num_items_in_batch is None:
            return total / keep.sum().clamp(min=1)
        return total / (num_items_in_batch.to(total.device) if hasattr(num_items_in_batch, "to")
                        else num_items_in_batch)

    def detach(self) -> None:
        self._handle.remove()


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum over rows of cross_entropy(hidden @ weight.T, target), float32 softmax, in chunks of rows; the gradient
    is computed chunk by chunk in the forward pass, so no [rows, vocab] tensor outlives its chunk."""
    return _autograd_function().apply(hidden, weight, target)


@functools.cache  # built on first use: texocr imports torch lazily
def _autograd_function() -> type:
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # hidden [N, D], weight [V, D], target [N]. Logits in the dtype nn.Linear would give them (the autocast
            # dtype when autocast is on), then float32 for the softmax, as the model's own loss does.
            dev = hidden.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
            w = weight.to(dtype)  # once, not per chunk (a 152k x 3584 head is 1 GB in bf16)
            rows = max(1, _ROW_ELEMENTS // weight.shape[0])
            grad_h = torch.empty_like(hidden)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
                if weight.requires_grad else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for s in range(0, hidden.shape[0], rows):
                h, t = hidden[s: s + rows].to(dtype), target[s: s + rows]
                logp = torch.log_softmax((h @ w.T).float(), dim=-1)  # [n, V]
                total += -logp.gather(1, t[:, None]).sum()
                dlogits = logp.exp_()  # softmax ...
                dlogits[torch.arange(len(t), device=t.device), t] -= 1.0  # ... minus one-hot: d(sum CE)/d logits
                dlogits = dlogits.to(dtype)  # the gradient reaches the matmul in its dtype, as autograd's would
                grad_h[s: s + rows] = (dlogits @ w).to(hidden.dtype)  # [n, D]
                if grad_w is not None:
                    grad_w += (dlogits.T @ h).float()  # [V, D]
            ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
            ctx.has_w, ctx.w_dtype = grad_w is not None, weight.dtype
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
            grad_h, grad_w = ctx.saved_tensors
            gh = grad_h * grad_out.to(grad_h.dtype)
            gw = (grad_w * grad_out).to(ctx.w_dtype) if ctx.has_w else None
            return gh, gw, None

    return LinearCrossEntropy
