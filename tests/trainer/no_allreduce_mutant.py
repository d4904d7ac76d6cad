"""A deliberately broken trainer for the DDP test's power check (test-only, never imported by
the package): the QAT CLI with DDP's gradient all-reduce replaced by a no-op communication
hook, so each rank steps on the gradient of its own half batch. Run under torchrun."""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

_init = DistributedDataParallel.__init__


def _local_only(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks these annotations literally
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())  # this rank's gradient, not the mean over ranks
    return fut


def _broken_init(self: DistributedDataParallel, *args: object, **kwargs: object) -> None:
    _init(self, *args, **kwargs)
    self.register_comm_hook(None, _local_only)


DistributedDataParallel.__init__ = _broken_init  # type: ignore[method-assign]

if __name__ == "__main__":
    from trainer.qat.cli import main

    sys.exit(main())
