"""One seed at a time, in this process or in a pool of spawned ones that each keep their env and renderer."""
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable, Dict, Iterator, Sequence, Tuple


def map_seeds(fn: Callable[..., Any], seeds: Sequence[int], args: Tuple[Any, ...], workers: int = 1,
              progress: bool = True, desc: str = 'episodes', process_state: Dict[str, Any] = None) -> Iterator[Any]:
    """Yield ``fn(seed, *args)`` for each seed, in seed order, with a progress bar.

    ``fn`` is a module-level function that keeps its env in ``process_state`` (a module-level dict); with
    ``workers`` > 1 it runs in spawned processes (SAPIEN's Vulkan state does not survive fork), one seed per task so
    the bar moves. Envs left in ``process_state`` by this process are closed at the end."""
    from tqdm import tqdm
    seeds = [int(s) for s in seeds]
    workers = max(1, min(int(workers), len(seeds)))
    bar = tqdm(total=len(seeds), desc=desc, unit='ep', disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1:
            for seed in seeds:
                yield fn(seed, *args)
                bar.update(1)
        elif seeds:
            with ProcessPoolExecutor(workers, mp_context=get_context('spawn')) as pool:
                columns = [[a] * len(seeds) for a in args]
                for result in pool.map(fn, seeds, *columns):
                    yield result
                    bar.update(1)
    finally:
        bar.close()
        for key in list(process_state or {}):
            env = process_state.pop(key)
            if hasattr(env, 'close'):
                env.close()
