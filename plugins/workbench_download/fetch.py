"""Fetching a repository's files into the standard Hugging Face cache.

Everything goes through `huggingface_hub`: the cache is the one other tools share
(`HF_HOME/hub/models--owner--name/`, `datasets--owner--name/` for dataset repositories), an interrupted transfer leaves a `.incomplete` blob that
the next call continues with a Range request, `HF_TOKEN` is sent when set, and `HF_HUB_OFFLINE=1`
resolves from the cache alone. What this module adds: one listing pinned to a commit, the disk
preflight, byte progress through `ctx`, retries that resume, cancellation, sha256 checks against
what the Hub publishes, and errors that say what to do.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench import locations
from workbench.context import Context
from workbench.errors import UserError
from workbench.hardware import fmt_bytes

if TYPE_CHECKING:
    from workbench_download.stage import Options

CHECKPOINT = "download.json"
HASH_BLOCK = 8 << 20


class DownloadInterrupted(RuntimeError):
    """A transfer broke off more often than the run may retry; the bytes received are kept."""


class RevisionMissing(UserError):
    """The branch, tag or commit asked for is not in the repository."""


class IntegrityError(RuntimeError):
    """A file's bytes do not match the sha256 the Hub publishes for it."""


@dataclass
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None  # published for LFS files only


@dataclass
class Listing:
    commit: str
    files: dict[str, RemoteFile]
    license: str | None
    gated: bool


def matches(path: str, patterns: list[str]) -> bool:
    """Glob match on the full path or the file name, ignoring case (Q4_K_M vs q4_k_m)."""
    name = path.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(path.lower(), p.lower()) or fnmatch.fnmatchcase(name, p.lower())
               for p in patterns)


class Downloader:
    """One repository (a model's or a dataset's) at one commit: list, select, preflight, fetch, verify."""

    def __init__(self, options: Options, ctx: Context, repo_type: str = "model"):
        from huggingface_hub import constants, get_token

        self.ctx = ctx
        self.repo_type = repo_type
        self.repo_id: str = options.repo_id
        self.ref: str = options.revision
        self.retries: int = options.retries
        self.include: list[str] = list(options.include)
        self.exclude: list[str] = list(options.exclude)
        self.endpoint = constants.ENDPOINT
        prefix = constants.REPO_TYPES_URL_PREFIXES.get(repo_type, "")
        self.page = f"{self.endpoint}/{prefix}{self.repo_id}"
        self.offline = constants.is_offline_mode()
        self.cache_dir = Path(constants.HF_HUB_CACHE)
        self.has_token = get_token() is not None
        self.revision = self.ref
        if ctx.resume_from:
            state = json.loads(Path(ctx.resume_from).read_text())
            if state.get("repo_id") == self.repo_id and state.get("commit"):
                # A resumed run finishes the commit it started, even if the branch moved since.
                self.revision = state["commit"]
                ctx.log(f"resuming {self.repo_id} at commit {self.revision[:12]}")
        with self.errors():
            self.listing = self._list()
        if not self.offline and self.revision == self.ref:  # not when a resumed run pinned an older commit
            self._record_ref()
        self.local: dict[str, Path] = {}
        where = "the local cache (offline)" if self.offline else self.endpoint
        n = len(self.listing.files)
        ctx.log(f"{self.repo_id} @ {self.ref} is commit {self.listing.commit} on {where}; "
                f"{n} file{'' if n == 1 else 's'}")

    # listing --------------------------------------------------------------------------------

    def _list(self) -> Listing:
        from huggingface_hub import HfApi, ModelCard, snapshot_download

        if self.offline:
            folder = Path(snapshot_download(self.repo_id, repo_type=self.repo_type, revision=self.revision,
                                            local_files_only=True))
            files = {
                p.relative_to(folder).as_posix(): RemoteFile(p.relative_to(folder).as_posix(), p.stat().st_size, None)
                for p in sorted(folder.rglob("*")) if p.is_file()
            }
            # The licence is in the card's front matter, when the card was downloaded.
            readme = folder / "README.md"
            card = ModelCard.load(readme, ignore_metadata_errors=True).data if readme.exists() else None
            return Listing(commit=folder.name, files=files, license=card.license if card else None, gated=False)
        info = HfApi().repo_info(self.repo_id, repo_type=self.repo_type, revision=self.revision,
                                 files_metadata=True)
        assert info.sha, "the Hub answers repository info with the commit hash"
        files = {
            s.rfilename: RemoteFile(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else None)
            for s in info.siblings or []
        }
        card = info.card_data.to_dict() if info.card_data is not None else {}
        license_ = card.get("license") or next(
            (t.split(":", 1)[1] for t in info.tags or [] if t.startswith("license:")), None)
        return Listing(commit=info.sha, files=files, license=license_, gated=bool(info.gated))

    def _record_ref(self) -> None:
        """refs/<branch> → commit in the cache, as snapshot_download writes it, so offline runs
        (here or in other tools) resolve the branch name; files are fetched by commit hash."""
        if self.ref == self.listing.commit:
            return
        ref_path = self.snapshot_dir.parent.parent / "refs" / self.ref
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref_path.with_name(ref_path.name + ".tmp")
        tmp.write_text(self.listing.commit)
        os.replace(tmp, ref_path)

    @property
    def snapshot_dir(self) -> Path:
        folder = f"{self.repo_type}s--" + self.repo_id.replace("/", "--")
        return self.cache_dir / folder / "snapshots" / self.listing.commit

    def candidates(self) -> list[str]:
        """Every file in the repository that no --exclude pattern removes."""
        return [f for f in self.listing.files if not (self.exclude and matches(f, self.exclude))]

    def wanted(self, default: list[str]) -> list[str]:
        """--include replaces the default selection; --exclude always applies."""
        if self.include:
            return [f for f in self.candidates() if matches(f, self.include)]
        return [f for f in default if not (self.exclude and matches(f, self.exclude))]

    # disk preflight ---------------------------------------------------------------------------

    def missing_bytes(self, paths: list[str]) -> int:
        """Bytes still to transfer: sizes of files not cached, less what partial blobs hold."""
        from huggingface_hub import try_to_load_from_cache

        total = 0
        for path in paths:
            cached = try_to_load_from_cache(self.repo_id, path, cache_dir=self.cache_dir,
                                            revision=self.listing.commit, repo_type=self.repo_type)
            if isinstance(cached, str):
                continue
            remote = self.listing.files[path]
            total += remote.size or 0
            if remote.sha256:
                partial = self.snapshot_dir.parent.parent / "blobs" / f"{remote.sha256}.incomplete"
                total -= partial.stat().st_size if partial.exists() else 0
        return max(total, 0)

    def preflight(self, paths: list[str], workspace_bytes: int, what: str) -> None:
        """Refuse before transferring anything when the cache's or the workspace's disk is too small."""
        needs = [(self.cache_dir, self.missing_bytes(paths), "download"),
                 (locations.home(), workspace_bytes, what)]
        by_device: dict[int, tuple[Path, int, list[str]]] = {}
        for path, n, label in needs:
            probe = existing_ancestor(path)
            dev = probe.stat().st_dev
            base, total, parts = by_device.get(dev, (probe, 0, []))
            by_device[dev] = (base, total + n, [*parts, f"{label} {fmt_bytes(n)}"])
        for probe, need, parts in by_device.values():
            free = shutil.disk_usage(probe).free
            if need > free:
                raise UserError(
                    f"{self.repo_id} needs {fmt_bytes(need)} free on {probe} ({', '.join(parts)}) but only "
                    f"{fmt_bytes(free)} is free; make room, or point HF_HOME (the download cache) or "
                    "WORKBENCH_HOME (the workspace) at a larger disk"
                )
            self.ctx.log(f"disk: {', '.join(parts)} needed on {probe}, {fmt_bytes(free)} free")

    # fetching ---------------------------------------------------------------------------------

    def fetch(self, paths: list[str]) -> dict[str, Path]:
        """Bring `paths` into the cache (resuming partial blobs); returns their snapshot paths."""
        sizes = [self.listing.files[p].size or 0 for p in paths]
        progress = _ByteProgress(self.ctx, total=sum(sizes))
        for path, size in zip(paths, sizes, strict=True):
            self.ctx.check_cancelled()
            progress.begin(path)
            self.local[path] = self._fetch_one(path, progress)
            progress.finish(size)
        return {p: self.local[p] for p in paths}

    def _fetch_one(self, path: str, progress: _ByteProgress) -> Path:
        import httpx
        from huggingface_hub import hf_hub_download

        for attempt in range(self.retries + 1):
            try:
                with self.errors(path):
                    local = hf_hub_download(self.repo_id, path, repo_type=self.repo_type,
                                            revision=self.listing.commit, cache_dir=self.cache_dir,
                                            tqdm_class=progress.bar_class())
                return Path(local)
            except httpx.TransportError as exc:
                # The blob's `.incomplete` part stays; the next attempt asks for the rest only.
                got = progress.file_bytes
                size = self.listing.files[path].size
                if attempt < self.retries:
                    self.ctx.log(f"transfer of {path} broke off after {fmt_bytes(got)} ({exc}); "
                                 f"resuming (retry {attempt + 1} of {self.retries})", level="warning")
                    continue
                resume = f"workbench runs resume {self.ctx.run_id}" if self.ctx.run_id else "the same download"
                raise DownloadInterrupted(
                    f"transfer of {path} from {self.endpoint} broke off after {fmt_bytes(got)}"
                    f"{f' of {fmt_bytes(size)}' if size else ''} ({exc}); the bytes received stay in the "
                    f"Hugging Face cache: run `{resume}` (or the same command again) to continue from there"
                ) from None
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise UserError(f"the disk filled up while downloading {path} into {self.cache_dir}; "
                                    "make room and run again (the part received is kept)") from None
                raise
        raise AssertionError("unreachable")

    def verify(self, paths: list[str]) -> list[dict[str, Any]]:
        """sha256 and size of each file; a file that differs from the Hub's sha256 is fetched again once."""
        total = sum(self.local[p].stat().st_size for p in paths)
        done, records = 0, []
        for path in paths:
            digest = self._sha256(self.local[path], done, total)
            expected = self.listing.files[path].sha256
            if expected and digest != expected:
                self.ctx.log(f"cached {path} does not match the Hub's sha256; fetching it again", level="warning")
                self._evict(path)
                progress = _ByteProgress(self.ctx, total=self.listing.files[path].size or 0)
                progress.begin(path)
                self.local[path] = self._fetch_one(path, progress)
                digest = self._sha256(self.local[path], done, total)
                if digest != expected:
                    raise IntegrityError(f"{path} from {self.repo_id} has sha256 {digest}, but the Hub publishes "
                                         f"{expected}; the transfer is corrupted on the way, try again later")
            size = self.local[path].stat().st_size
            done += size
            records.append({"path": path, "size": size, "sha256": digest})
        return records

    def _sha256(self, path: Path, done: int, total: int) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(HASH_BLOCK):
                h.update(block)
                done += len(block)
                self.ctx.progress(done, total, unit="B", desc=f"sha256 {path.name}")
                self.ctx.check_cancelled()
        return h.hexdigest()

    def _evict(self, path: str) -> None:
        """Remove a bad blob and its snapshot link so the next fetch starts clean."""
        pointer = self.local[path]
        blob = pointer.resolve()
        pointer.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)

    # state, metadata and errors ---------------------------------------------------------------

    def checkpoint(self) -> None:
        """Record the commit this run downloads, so a resumed run finishes the same one; the
        bytes themselves wait in the cache's partial blobs."""
        path = self.ctx.checkpoints_dir / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        cached = sum(p.stat().st_size for p in self.local.values())
        tmp.write_text(json.dumps({"repo_id": self.repo_id, "ref": self.ref,
                                   "commit": self.listing.commit, "cached_bytes": cached}))
        os.replace(tmp, path)
        self.ctx.checkpoint(path, cached)

    def source_metadata(self, files: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "hf_repo_id": self.repo_id, "hf_repo_type": self.repo_type, "hf_revision": self.listing.commit,
            "hf_ref": self.ref,
            "hf_endpoint": self.endpoint, "hf_cache": str(self.snapshot_dir), "hf_gated": self.listing.gated,
            "license": self.listing.license, "files": files,
        }

    @contextmanager
    def errors(self, path: str | None = None) -> Iterator[None]:
        """Turn the Hub client's exceptions into one sentence that says what to do."""
        import httpx
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        repo, page = self.repo_id, self.page
        try:
            yield
        except GatedRepoError as exc:
            if exc.response is not None and exc.response.status_code == 403:
                raise UserError(
                    f"the token in HF_TOKEN has no access to the gated repository {repo} yet: open {page} "
                    "while logged in, accept the licence (some authors approve requests by hand), then run again"
                ) from None
            raise UserError(
                f"{repo} is a gated repository and no access token was sent: accept its licence at {page} "
                f"while logged in, create a read token at {self.endpoint}/settings/tokens, and set HF_TOKEN "
                "to it (or run `hf auth login`) before running again"
            ) from None
        except RepositoryNotFoundError:
            hint = "" if self.has_token else "; if it is private, set HF_TOKEN to a token that can read it"
            kind = "dataset repository" if self.repo_type == "dataset" else "repository"
            raise UserError(f"{kind} {repo} was not found on {self.endpoint}: check the id "
                            f"(owner/name, as in {page}){hint}") from None
        except RevisionNotFoundError:
            raise RevisionMissing(f"revision '{self.revision}' does not exist in {repo}; use a branch, tag or "
                            f"commit hash from {page}") from None
        except RemoteEntryNotFoundError:
            raise UserError(f"{path} is not in {repo} at {self.revision}") from None
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):
            what = f"{path} of {repo}" if path else repo
            if self.offline:
                raise UserError(
                    f"{what} at '{self.revision}' is not in the Hugging Face cache ({self.cache_dir}) and "
                    "HF_HUB_OFFLINE=1 forbids downloading; run once online first, or unset HF_HUB_OFFLINE"
                ) from None
            raise UserError(f"cannot reach {self.endpoint} to download {what}, and it is not cached; check the "
                            "network (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use the cache") from None
        except (httpx.ConnectError, httpx.TimeoutException) as exc:
            if path is not None:
                raise  # a transfer that broke off: the caller resumes it
            raise UserError(f"cannot reach {self.endpoint} ({exc}); check the network (or HF_ENDPOINT), or set "
                            "HF_HUB_OFFLINE=1 to use what is already cached") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 401:
                raise UserError(f"{self.endpoint} refused the token in HF_TOKEN (401); create a new read token "
                                f"at {self.endpoint}/settings/tokens") from None
            raise


class _ByteProgress:
    """Stands in for tqdm inside huggingface_hub: byte counts become `ctx.progress` events."""

    def __init__(self, ctx: Context, total: int):
        self.ctx, self.total = ctx, total
        self.done_files = 0  # bytes of the files already finished
        self.file_bytes = 0  # bytes of the current file on disk, resumed part included
        self.path = ""

    @property
    def done(self) -> int:
        return self.done_files + self.file_bytes

    def begin(self, path: str) -> None:
        self.path, self.file_bytes = path, 0

    def finish(self, size: int) -> None:
        self.done_files += size
        self.file_bytes = 0
        self.ctx.progress(self.done, self.total, unit="B", desc=self.path)

    def advance(self, n: int) -> None:
        self.file_bytes += n
        self.ctx.progress(self.done, self.total, unit="B", desc=self.path)
        # The partial blob stays in the cache; resuming asks for the rest.
        self.ctx.check_cancelled()

    def bar_class(self) -> type:
        progress = self

        class Bar:
            """The slice of tqdm's interface that huggingface_hub uses."""

            def __init__(self, *args: Any, initial: int = 0, **kwargs: Any):
                progress.file_bytes = int(initial or 0)

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def update(self, n: float | None = 1) -> None:
                progress.advance(int(n or 0))

            def set_description(self, *args: Any, **kwargs: Any) -> None:
                pass

            def refresh(self) -> None:
                pass

            def close(self) -> None:
                pass

        return Bar


def existing_ancestor(path: Path) -> Path:
    """The nearest ancestor that exists, to ask its filesystem about free space or its device."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path
