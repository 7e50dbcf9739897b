"""Two-process gloo run: EMA statistics are all-reduced and kmeans / re-seeded codes broadcast from rank 0,
so codebooks stay identical across ranks although each rank sees different data."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from codec.quantization import ResidualVQ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, kw: dict, init: bool = False) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(1234)  # same initial weights on every rank (as DDP would broadcast)
        rvq = ResidualVQ(input_dim=8, rvq_dim=8, num_quantizers=3, codebook_size=32, codebook_dim=4,
                         threshold_ema_dead_code=1.0, quantizer_dropout=0.5, **kw)
        torch.manual_seed(rank)  # different data (and dropout draws) per rank
        if init:  # rank 0's sample decides the codebooks and the least-squares output projections
            rvq.init_codebooks_from_data(torch.randn(200 + 50 * rank, 8) * (1 + rank) + rank, ema_count=1.0)
            torch.save({k: v.clone() for k, v in rvq.state_dict().items()}, os.path.join(out_dir, f"init{rank}.pt"))
        for step in range(6):
            T = 40 + 10 * rank
            x = torch.randn(3, 8, T) * (1 + rank) + rank
            lengths = torch.tensor([T, T // 2, 0 if step == 2 and rank == 1 else 5])  # rank 1: an empty item
            if step == 3 and rank == 1:
                lengths = torch.zeros(3, dtype=torch.long)  # fully padded batch on one rank only
            out = rvq(x, lengths)
            assert torch.isfinite(out.commit_loss)
        torch.save({k: v.clone() for k, v in rvq.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run(tmp_path, init: bool = False, **kw):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path), kw, init), nprocs=2, join=True)
    s0 = torch.load(tmp_path / "rank0.pt")
    s1 = torch.load(tmp_path / "rank1.pt")
    keys = [k for k in s0 if any(n in k for n in ("embed", "cluster_size", "initted"))]
    assert keys
    for k in keys:
        assert torch.equal(s0[k], s1[k]), k
    assert all(bool(v) for k, v in s0.items() if k.endswith("initted"))
    # the codebooks did train (not still at their random initialisation)
    torch.manual_seed(1234)
    fresh = ResidualVQ(input_dim=8, rvq_dim=8, num_quantizers=3, codebook_size=32, codebook_dim=4, **kw)
    k0 = [k for k in keys if k.endswith("embed")][0]
    assert not torch.equal(fresh.state_dict()[k0], s0[k0])


def test_ddp_codebooks_identical_across_ranks(tmp_path):
    _run(tmp_path)


def test_ddp_shared_codebook_gradient_variant(tmp_path):
    _run(tmp_path, shared_codebook=True, use_ema=False)


def test_ddp_init_codebooks_from_data_gives_every_rank_rank0s_fit(tmp_path):
    _run(tmp_path, init=True)
    i0, i1 = torch.load(tmp_path / "init0.pt"), torch.load(tmp_path / "init1.pt")
    assert i0.keys() == i1.keys() and any("out_proj" in k for k in i0)
    for k in i0:   # codebooks, EMA counts and output projections alike
        assert torch.equal(i0[k], i1[k]), k
