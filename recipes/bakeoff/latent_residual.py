"""How much of the encoder's latent the residual quantizer reproduces, per number of levels.

    python recipes/bakeoff/latent_residual.py $CODEC_DATA/valid_eval.jsonl --model speech-24k --nq 1,2,4,8,16,32

Encodes every clip of a manifest (or folder) to the latent ``[1, D, F]``, quantizes it with the first ``nq``
levels and decodes the codes back to the latent space, then prints per ``nq`` the residual energy
``||lat - q||^2 / ||lat||^2`` over all frames, and the cosine similarity of ``q`` and ``lat`` with each
dimension's mean removed. A residual quantizer that approximates its input drives the first figure down as
``nq`` grows; one whose levels carry information only the decoder reads leaves it flat.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Sequence, Tuple

import torch


def latents(model, wavs: Sequence) -> torch.Tensor:
    """Encoder latents of each mono clip (numpy ``[T]`` at the model's rate), concatenated -> ``[1, D, F]``."""
    hop = model.hop_length
    out = []
    with torch.no_grad():
        for x in wavs:
            n = len(x) // hop * hop
            if n:
                out.append(model.encoder(torch.as_tensor(x[:n], dtype=torch.float32)[None, None]))
    return torch.cat(out, dim=-1)


def residual_table(quantizer, lat: torch.Tensor, nqs: Sequence[int]) -> Dict[int, Tuple[float, float]]:
    """-> {nq: (residual energy fraction, cosine similarity of the mean-removed q and latent)}."""
    centred = (lat - lat.mean(-1, keepdim=True)).flatten()
    table = {}
    with torch.no_grad():
        for nq in nqs:
            q = quantizer.decode(quantizer.encode(lat, n_q=nq))
            frac = float((lat - q).pow(2).sum() / lat.pow(2).sum())
            cos = float(torch.nn.functional.cosine_similarity((q - q.mean(-1, keepdim=True)).flatten(), centred, 0))
            table[nq] = (frac, cos)
    return table


def main(argv: List[str]) -> int:
    from codec import pretrained
    from codec.train.data import load_segment, read_items

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="a .jsonl manifest or a folder of audio")
    ap.add_argument("--model", default="speech-24k")
    ap.add_argument("--nq", default="1,2,4,8,16,32")
    a = ap.parse_args(argv)
    model = pretrained.load(a.model)
    wavs = [load_segment(it["path"], model.sample_rate) for it in read_items(a.input)]
    table = residual_table(model.quantizer, latents(model, wavs), [int(n) for n in a.nq.split(",")])
    print("| nq | residual energy | cosine (mean removed) |\n|---|---|---|")
    for nq, (frac, cos) in table.items():
        print(f"| {nq} | {frac:.3f} | {cos:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
