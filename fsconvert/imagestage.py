"""The image stage shared by every format: decode, one remap, encode, for each view's plan, all cores.

Formats call `write_images` with their plans (`fsconvert.imageplan`) and names (`stems`). JPEGs are
decoded by libjpeg-turbo with its warnings as errors (corrupt data); images needing no resampling
are linked or copied, after a 1/8-size verification decode.

`workers` > 1 runs the views on that many THREADS of this process, not processes. Each view's work is
native code that releases the GIL for its whole length (simplejpeg's decode, `cv2.remap`, `cv2.imencode`,
the file read and write; fpng does not, so each thread has a helper process encode its PNGs, the pixels made
in the memory they share, `fsconvert.pngprocess`), so threads run it on as many cores, and they start at
once: spawned worker processes re-import the package (numpy, OpenCV, the renderer) before their first view,
which for one tuple of ~20 views costs about what the views do (measured: `-j 2` no faster than `-j 1`), and
each one would pickle its plans in and its previews and footprints out. The rules that keep it correct:

- each thread has its own scratch arrays (`remapmaps.SCRATCH` is a `threading.local`: the decoded image,
  the undistortion maps and the remapped image of one thread are never another's; the preview and
  footprint a view returns are new arrays), freed when the pool's threads end;
- OpenCV's own threads are set to 1 while the pool runs (`threads.opencv_threads`, process-wide, put back
  after), so that N threads use N cores; with `workers` 1 the views run in the calling thread with
  OpenCV's threads as the caller set them (the command line's `--threads`);
- results come back in view order (the progress bar, the footprints, the first error), at most 2 × N
  views started ahead: N images in memory at a time, one per thread;
- the first exception in view order is raised (a corrupt JPEG's InputError, an OutputError), as with
  one worker; views not started then never start, and running ones finish before it propagates;
- in a dataset run's worker process the views share the machine's cores with the other workers
  (`fsconvert.threads`: a core budget): up to N threads, as many views at once as the process has cores
  now, one while every worker is busy, all N for the last tuple left.

The output is byte-identical at any `workers` (every step is deterministic and per view).
One module of ~500 lines: decoding, producing one view and scheduling the views share the per-thread scratch
and the job record; split, each part would import the others' internals.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from tqdm import tqdm

from . import conventions as cv
from .errors import InputError, OutputError
from .imageplan import REDUCTIONS, ImageOptions, ViewPlan
from .model import View
from .pngprocess import FpngProcess, FpngProcesses
from .remapmaps import SCRATCH
from .threads import check_stop, give_back_core, opencv_threads, shares_cores, spare_core
from .writers import encoded, png_bytes, write_bytes

_REDUCED_FLAG = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
MAP_ROWS = 256
"""Output rows remapped at a time: a band's maps are 9 MB at 4344 px (a whole view's 100 MB per thread)."""
PREVIEW_MAX_SIDE = 800
"""Long side of the check's renders and overlays: the output is shown at 1/1, 1/2, 1/4 or 1/8 of its size."""
_previews: dict[Path, np.ndarray] | None = None
WrittenCallback = Callable[[ViewPlan, Path, np.ndarray, bytes, bool], None]
"""Called with a plan, the image written for it, the decoded source image it was made from, the bytes written and
whether that source is in RGB order (else BGR, `on_written`)."""
_written: WrittenCallback | None = None


def read_image(path: Path, reduce: int = 1, view: int | None = None, *, allow_corrupt: bool = False,
               scratch: bool = False, rgb: bool = False) -> np.ndarray:
    """Decode a colour image at 1/`reduce` size (EXIF orientation ignored: cameras describe the stored pixels), in
    BGR order as OpenCV holds images, or with `rgb` in RGB order (the same values: libjpeg-turbo stores its
    conversion in either order; for PNGs, which fpng takes so).

    JPEGs go through libjpeg-turbo with its warnings as errors: data overwritten mid-file (which
    decoders otherwise fill with grey or garbled blocks) is a one-line InputError, or with
    `allow_corrupt` a warning on stderr and the pixels the decoder recovered. `scratch`: a JPEG is decoded
    into this thread's reusable array (`remapmaps.SCRATCH`, overwritten by the next such call) instead of a
    new one: a fresh 38 MB array is mapped, faulted in page by page and unmapped per view, which threads of
    one process do in turn (measured on 2 cores: 2 threads decoding 4344×2896 JPEGs into new arrays ran at
    0.3 to 1.6× one thread's speed from run to run, into reused arrays 1.4 to 1.5×, another process busy).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image: {exc.strerror or exc}", file=path, view=view) from None
    if simplejpeg.is_jpeg(data):
        img = _decode_jpeg(data, reduce, path, view, allow_corrupt, scratch, "RGB" if rgb else "BGR")
        if img is not None:
            return img
    img = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAG[reduce] | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise InputError("cannot decode image (truncated or corrupt)", file=path, view=view)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if rgb else img


def verify_jpeg(path: Path, view: int | None = None, *, allow_corrupt: bool = False) -> None:
    """Decode a JPEG at 1/8 size (every entropy-coded byte is still read) only to find corrupt data."""
    read_image(path, 8, view, allow_corrupt=allow_corrupt)


def _decode_jpeg(data: bytes, reduce: int, path: Path, view: int | None, allow_corrupt: bool,
                 scratch: bool = False, order: str = "BGR") -> np.ndarray | None:
    """libjpeg-turbo's strict decode (the same pixels as OpenCV's, measured), or None where OpenCV decodes:
    colour spaces it does not convert (CMYK, ...), and what it cannot recover of an allowed corrupt file.
    `scratch`: into this thread's reusable array, sized for 1/`reduce` (libjpeg-turbo decodes at the smallest
    of its scales giving at least that size, and 1/`reduce` is one of them). `order`: "BGR" or "RGB"."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return None
    min_width, min_height = cv.reduced_size((width, height), reduce)
    out = SCRATCH.array("decoded", (min_height, min_width, 3), np.uint8) if scratch else None
    try:
        strict: np.ndarray = simplejpeg.decode_jpeg(data, order, min_height=min_height, min_width=min_width,
                                                    buffer=out, strict=True)
        return strict
    except ValueError as exc:
        reason = f"corrupt JPEG data ({exc})"
    if not allow_corrupt:
        raise InputError(f"{reason}; not exported (--allow-corrupt-images exports it anyway)", file=path, view=view)
    # one write per line: warnings of the stage's threads never interleave
    print(f"fsconvert: warning: {InputError(reason, file=path, view=view)}; exported anyway\n", end="", file=sys.stderr)
    try:
        recovered: np.ndarray = simplejpeg.decode_jpeg(data, order, min_height=min_height, min_width=min_width,
                                                       buffer=out, strict=False)
        return recovered
    except ValueError:
        return None


def write_image(path: Path, img: np.ndarray, options: ImageOptions, *, fpng: FpngProcess | None = None,
                rgb: bool = False) -> bytes:
    """Encode and write; return the bytes written. Write errors (disk full, read-only) become OutputError.
    `fpng`: the process that encodes a PNG; `rgb`: a PNG's colour is in RGB(A) order (a JPEG's is BGR)."""
    if options.image_format == "png":
        data = png_bytes(img, path, rgb=rgb,
                         fpng_encode=None if fpng is None else functools.partial(fpng.encode, path=path))
    else:
        data = encoded(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality], path)
    write_bytes(path, data)
    return data


@dataclass(frozen=True, eq=False)
class Footprint:
    """The output pixels interpolated from source pixels only (not the empty border that undistortion
    leaves where the source image has no data), one bit per pixel."""

    bits: np.ndarray
    """H×⌈W/8⌉ uint8, `np.packbits` along rows."""
    width: int

    @classmethod
    def of(cls, inside: np.ndarray) -> Footprint:
        return cls(np.packbits(inside, axis=1), inside.shape[1])

    @classmethod
    def full(cls, size: tuple[int, int]) -> Footprint:
        """Every pixel of a width×height image."""
        return cls(np.full((size[1], (size[0] + 7) // 8), 255, np.uint8), size[0])

    def __and__(self, other: Footprint) -> Footprint:
        """The pixels in both."""
        return Footprint(np.bitwise_and(self.bits, other.bits), self.width)

    def mask(self) -> np.ndarray:
        """H×W bool."""
        return np.unpackbits(self.bits, axis=1, count=self.width).view(bool)

    def alpha(self) -> np.ndarray:
        """H×W uint8: 255 inside, 0 outside."""
        unpacked = np.unpackbits(self.bits, axis=1, count=self.width)
        unpacked *= 255
        return unpacked




@dataclass(frozen=True)
class _Job:
    """One output image: its plan and file; whether to return its footprint and a preview; the mesh's
    silhouettes, of which its `index`-th is in it, for `alpha` "subject" (taken when the view is made: they may
    still be rendering); whom to tell once it is written (`on_written`)."""

    plan: ViewPlan
    dest: Path
    footprint: bool
    preview: bool
    index: int = 0
    subjects: Sequence[Footprint] | None = None
    written: WrittenCallback | None = None


def _produce(job: _Job, fpng: FpngProcesses | None = None) -> tuple[Footprint | None, np.ndarray | None]:
    """Write the output image; with `footprint`, also return where it has source data, with `preview` a
    copy at `preview_size` (none for originals placed unchanged). With the plan's `alpha`, an RGBA PNG
    whose alpha is 255 where the pixel has source data (and, "subject", the mesh covers it), else 0 with
    RGB 0. `fpng`: a PNG is encoded by this thread's helper process (started now, while the view decodes)."""
    plan, dest, alpha = job.plan, job.dest, job.plan.options.alpha != "none"
    footprint = job.footprint or alpha
    view = plan.view
    allow = plan.options.allow_corrupt_images
    if not plan.resample:
        verify_jpeg(view.image, view.id, allow_corrupt=allow)
        _place_original(view.image, dest, plan.options.link)
        return Footprint.full(plan.camera.size) if footprint else None, None
    rgb = plan.options.image_format == "png"  # 8-bit colour PNGs are fpng's, which takes RGB(A): decoded so
    encoder = fpng.for_this_thread() if fpng is not None and rgb else None
    img = read_image(view.image, plan.reduce, view.id, allow_corrupt=allow, scratch=True, rgb=rgb)
    if img.shape[1::-1] != cv.reduced_size(view.camera.size, plan.reduce):
        img = read_image(view.image, 1, view.id, allow_corrupt=allow, scratch=True, rgb=rgb)
        if img.shape[:2] != (view.camera.height, view.camera.width):
            raise InputError(
                f"decoded image is {img.shape[1]}×{img.shape[0]}, params.json says "
                f"{view.camera.width}×{view.camera.height}",
                file=view.image,
                view=view.id,
            )
        plan = replace(plan, reduce=1)
    decoded = img
    found = Footprint.full(plan.camera.size) if footprint else None
    subject = None
    if plan.options.alpha == "subject":
        if job.subjects is None:
            raise ValueError("alpha 'subject' needs the mesh's silhouette of every view (subjects)")
        subject = job.subjects[job.index]
    if _needs_remap(plan):
        W, H = plan.camera.size
        # with alpha, each band is remapped into a band of scratch and goes on into the RGBA image at once: no
        # 3-channel image of the whole view beside it (a 12.6 MP view's is 38 MB); a PNG for a helper process
        # is made in the memory it encodes from
        shape = (H, W, 4) if alpha else (H, W, *img.shape[2:])
        out = encoder.pixels(shape) if encoder is not None else SCRATCH.array("rgba" if alpha else "remapped", shape,
                                                                              np.uint8)
        bits = np.empty((H, -(-W // 8)), np.uint8) if footprint else None
        for y, mx, my in plan.map_bands(MAP_ROWS, scratch=True):
            band = slice(y, y + len(mx))
            if bits is not None:
                bits[band] = np.packbits(_inside_source(mx, my, img.shape[1::-1]), axis=1)
            if not alpha:
                cv2.remap(img, mx, my, cv2.INTER_LINEAR, dst=out[band], borderMode=cv2.BORDER_CONSTANT)
                continue
            assert bits is not None  # alpha asks for the footprint
            remapped = SCRATCH.array("remapped band", (MAP_ROWS, W, *img.shape[2:]), np.uint8)[:len(mx)]
            cv2.remap(img, mx, my, cv2.INTER_LINEAR, dst=remapped, borderMode=cv2.BORDER_CONSTANT)
            _with_alpha(remapped, _alpha_rows(bits[band], subject, band, W), out[band])
        if bits is not None:
            found = Footprint(bits, W)
        img = out
    elif plan.rotated:  # never with alpha: it needs undistortion (`ImageOptions`), so a remap
        img = cv2.flip(img, -1)
    preview = None
    if job.preview:
        preview = shrink(img[..., :3] if alpha else img, preview_size(plan.camera.size))
        if rgb:
            preview = cv2.cvtColor(preview, cv2.COLOR_RGB2BGR)
    data = write_image(dest, img, plan.options, fpng=encoder, rgb=rgb)
    if job.written is not None:
        job.written(plan, dest, decoded, data, rgb)
    return found if job.footprint else None, preview


def preview_reduction(size: tuple[int, int], max_side: int = PREVIEW_MAX_SIDE) -> int:
    """r, the smallest of 1, 2, 4, 8 giving an image of `size` a long side ≤ `max_side` at 1/r (else 8)."""
    return next((r for r in reversed(REDUCTIONS) if max(size) <= max_side * r), max(REDUCTIONS))


def preview_size(size: tuple[int, int], max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """(width, height) of an image of `size` at 1/`preview_reduction`: the size its JPEG decodes to directly."""
    return cv.reduced_size(size, preview_reduction(size, max_side))


def shrink(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A new `img` at `size` (1/1, 1/2, 1/4 or 1/8 of it): bilinear down to twice `size`, then 2×2 box means,
    pixel centres kept in place (12.6 MP to 543×362: ~1 ms, a twentieth of decoding its JPEG at 1/8)."""
    w, h = size
    if img.shape[1] >= 4 * w:
        img = cv2.resize(img, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    if img.shape[1] == w:
        return img.copy()
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


@contextmanager
def keep_previews(enabled: bool = True) -> Iterator[dict[Path, np.ndarray]]:
    """While open, every image `run_plans` makes (in any of its threads) also leaves a `shrink`ed copy at
    `preview_size` in the yielded dict, by output path: the check's overlays then decode no exported file."""
    global _previews
    kept: dict[Path, np.ndarray]
    previous, kept = _previews, {}
    _previews = kept if enabled else previous
    try:
        yield kept
    finally:
        _previews = previous


@contextmanager
def on_written(callback: WrittenCallback | None) -> Iterator[None]:
    """While open, `run_plans` calls `callback(plan, path, source, data, rgb)` right after writing each image it
    resamples, in the thread that wrote it (`callback` must be thread-safe): `source` is the decoded source image
    the image was made from, at 1/`plan.reduce` (this thread's scratch array: valid during the call only), in RGB
    order where `rgb` (a PNG's), else BGR; `data` the bytes written. Originals placed unchanged are not reported.
    None: as before."""
    global _written
    previous = _written
    _written = previous if callback is None else callback
    try:
        yield
    finally:
        _written = previous


def _inside_source(mx: np.ndarray, my: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8, 255 where remap maps point inside a width×height decoded image (bilinear from source pixels only):
    0 ≤ mx ≤ width − 1 and 0 ≤ my ≤ height − 1, compared in float32 like the maps."""
    inside = cv2.inRange(mx, 0.0, size[0] - 1.0)
    return cv2.bitwise_and(inside, cv2.inRange(my, 0.0, size[1] - 1.0), dst=inside)


def _alpha_rows(inside: np.ndarray, subject: Footprint | None, rows: slice, width: int) -> np.ndarray:
    """uint8 alpha (255 or 0) of image rows `rows`: where the pixel has source data (`inside`, those rows' packed
    footprint bits) and, with a `subject`, where the mesh covers it."""
    alpha = np.unpackbits(inside, axis=1, count=width)
    if subject is not None:
        np.bitwise_and(alpha, np.unpackbits(subject.bits[rows], axis=1, count=width), out=alpha)
    alpha *= 255
    return alpha


def _with_alpha(img: np.ndarray, alpha: np.ndarray, rgba: np.ndarray) -> None:
    """Into `rgba` (rows × W × 4): `img`'s three channels, in their order, where `alpha` (uint8, 0 or 255) is 255, else
    0, and `alpha` as the fourth; BGR→BGRA (which appends a channel, swapping none), then AND with (alpha, alpha,
    alpha, alpha) in OpenCV (8 ms per 12.6 MP view, band by band; numpy's broadcast AND into the strided channels
    took 107 ms)."""
    mask = SCRATCH.array("alpha band", (len(alpha), alpha.shape[1], 4), np.uint8)
    cv2.cvtColor(img, cv2.COLOR_BGR2BGRA, dst=rgba)
    cv2.bitwise_and(rgba, cv2.merge([alpha, alpha, alpha, alpha], dst=mask), dst=rgba)


def _needs_remap(plan: ViewPlan) -> bool:
    """False only when the decoded pixels are already the output's (up to a 180° flip)."""
    w, h = plan.camera.size
    return plan.options.undistort or (w * plan.reduce, h * plan.reduce) != plan.view.camera.size


def _place_original(src: Path, dest: Path, link: str) -> None:
    try:
        if link == "symlink":
            os.symlink(Path(src).resolve(), dest)
            return
        if link == "hardlink":
            try:
                os.link(src, dest)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
        shutil.copyfile(src, dest)
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write: {exc.strerror or exc}") from None


_AHEAD = 2
"""Views started per thread ahead of the one the stage yields next (their results are small)."""


def run_plans(
    jobs: Iterable[tuple[ViewPlan, Path]],
    *,
    workers: int = 1,
    progress: bool = False,
    desc: str = "images",
    footprints: bool = False,
    subjects: Sequence[Footprint] | None = None,
) -> list[Footprint] | None:
    """Run plans, `workers` threads in parallel (see the module's notes), streaming images in view order (one
    per thread in memory); with `footprints`, return each output image's `Footprint` (computed from the remap
    it was made with); `subjects`: the mesh's silhouette per image, for the alpha option "subject" (each taken
    as its view is made: `depthproducts.SilhouettesAhead` may still be rendering the later ones)."""
    kept, written = _previews, _written
    tasks = [_Job(plan, dest, footprints, kept is not None, k, subjects, written)
             for k, (plan, dest) in enumerate(jobs)]
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        out: list[Footprint] = []
        with closing(_results(tasks, workers)) as results:
            for task, (footprint, preview) in zip(tasks, results):
                if footprints:
                    assert footprint is not None  # _produce makes one for every job that asks for it
                    out.append(footprint)
                if preview is not None:
                    assert kept is not None  # previews are asked for only while keep_previews is open
                    kept[task.dest] = preview
                bar.update()
        return out if footprints else None
    finally:
        bar.close()
        SCRATCH.release()


_Result = tuple[Footprint | None, np.ndarray | None]


def _results(tasks: Sequence[_Job], workers: int) -> Generator[_Result, None, None]:
    """`_produce` of each task, in order: in this thread, or on up to `workers` threads (at most one per task)
    with OpenCV single-threaded, as many views at a time as this process has cores: all `workers` without a core
    budget, else its own core (which its job holds) plus the budget's spare ones, each taken for one view
    (`fsconvert.threads`). Each thread is a lane of its own, a new one started only when none is idle, so only as
    many threads as ran views at once hold scratch arrays. The first exception in task order is raised once the
    running views have finished; views not started by then never start, nor any after a stop (`check_stop`)."""
    threads = min(workers, len(tasks))
    if threads <= 1:
        for task in tasks:
            check_stop()
            yield _produce(task)
        return
    own = 1 if shares_cores() else threads  # the views running beyond `own` hold a spare core each
    lanes: list[ThreadPoolExecutor] = []
    free: list[ThreadPoolExecutor] = []  # idle lanes
    running: dict[Future[_Result], ThreadPoolExecutor] = {}  # → its lane
    order: deque[Future[_Result]] = deque()  # started, not yet yielded, in task order
    todo = iter(tasks)
    following = next(todo, None)
    fpng = FpngProcesses() if any(t.plan.options.image_format == "png" for t in tasks) else None
    with opencv_threads(1):
        try:
            while order or following is not None:
                for future in [f for f in running if f.done()]:
                    free.append(running.pop(future))
                    if len(running) >= own:  # a spare core, back after each view: a job starting elsewhere may need it
                        give_back_core()
                while following is not None and len(order) < _AHEAD * threads and len(running) < threads:
                    check_stop()
                    if len(running) >= own and not spare_core():
                        break
                    if not free:
                        lanes.append(ThreadPoolExecutor(1, thread_name_prefix=f"fsconvert-images-{len(lanes)}"))
                        free.append(lanes[-1])
                    lane = free.pop()
                    future = lane.submit(_produce, following, fpng)
                    running[future] = lane
                    order.append(future)
                    following = next(todo, None)
                if order[0].done():
                    yield order.popleft().result()
                else:
                    wait(running, return_when=FIRST_COMPLETED)
        finally:  # done, an error, or the consumer stopped: the running views finish, their cores go back
            for lane in lanes:
                lane.shutdown()
            if fpng is not None:
                fpng.close()
            for _ in range(len(running) - own):
                give_back_core()


def write_images(plans: Sequence[ViewPlan], names: Sequence[str], folder: Path, *, workers: int = 1,
                 progress: bool = False, footprints: bool = False,
                 subjects: Sequence[Footprint] | None = None) -> list[Footprint] | None:
    """Run the image stage for each plan into `folder/name` (folders created as needed); with
    `footprints`, return where each output image has source data (for masks); `subjects`: each view's
    mesh silhouette, for alpha "subject" (`fsconvert.depthproducts.subjects_ahead`)."""
    dests = [folder / n for n in names]
    for d in sorted({d.parent for d in dests}):
        d.mkdir(parents=True, exist_ok=True)
    return run_plans(zip(plans, dests), workers=workers, progress=progress, footprints=footprints,
                     subjects=subjects)


def stems(views: Sequence[View], digits: int = 3) -> list[str]:
    """Zero-padded view ids, all as wide as the widest id and at least `digits`: sorted names sort by id."""
    width = max(digits, len(str(max(v.id for v in views))))
    return [f"{v.id:0{width}d}" for v in views]


def uncovered_warnings(fmt: str, names: Sequence[str], footprints: Sequence[Footprint], readers: str) -> list[str]:
    """One line when output images hold pixels without source data (black: the border undistortion and a
    shared frame leave) that the format marks nowhere its `readers` look."""
    fractions = [1.0 - float(fp.mask().mean()) for fp in footprints]
    worst = max(range(len(fractions)), key=fractions.__getitem__, default=None)
    if worst is None or fractions[worst] == 0:
        return []
    count = sum(f > 0 for f in fractions)
    return [f"{fmt}: {count} of {len(names)} images have pixels without source data (black; up to "
            f"{100 * fractions[worst]:.1f} % in {names[worst]}), which {readers} read as image content: "
            "--border crop keeps only covered pixels"]
