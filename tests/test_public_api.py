"""The public API changes only on purpose: edit EXPECTED together with diskledger/__init__.py."""

from __future__ import annotations

import re

import diskledger
from diskledger import errors

EXPECTED = {
    # Progress of long copies (issue 17): the callback's type and its event.
    "Progress",
    "ProgressEvent",
    "Encryption",
    "KeyNotFound",
    "KeyProvider",
    "LocalKeyDirectory",
    "UnsafeKeyStore",
    "FeedGap",
    "Fenced",
    "LeaseSettings",
    "MemberRecord",
    "MemberState",
    "MemberView",
    "OwnershipLost",
    "TakeoverReport",
    "Attachment",
    "DiskAttached",
    "DiskSource",
    "DomainNotFound",
    "HypervisorError",
    "HypervisorUnavailable",
    "DirectSnapshot",
    "ImageBusy",
    "CephUnavailable",
    "CephError",
    "Artifact",
    "Backend",
    "BackendError",
    "ConcurrencyError",
    "Config",
    "Conflict",
    "DiskLedgerError",
    "DiskNotFound",
    "DiskState",
    "DiskView",
    "Engine",
    "EventStore",
    "Export",
    "IllegalTransition",
    "InvalidInput",
    "InvalidName",
    "InvalidSize",
    "InvalidSource",
    "Metadata",
    "NewEvent",
    "NotFound",
    "Observation",
    "OperationPending",
    "RecordedEvent",
    "SnapshotNotFound",
    "StoreError",
    "TemplateNotFound",
    "TemplateState",
    "TemplateView",
    "UnknownBackend",
    "UnsafeImage",
    "open_store",
    "parse_size",
}


def test_exported_names_are_exactly_the_expected_ones() -> None:
    assert set(diskledger.__all__) == EXPECTED
    for name in diskledger.__all__:
        assert getattr(diskledger, name) is not None


def test_all_is_sorted() -> None:
    assert list(diskledger.__all__) == sorted(diskledger.__all__)


def test_the_error_tree_in_the_docstring_matches_the_classes() -> None:
    drawn = re.findall(r"[├└]── (\w+)", errors.__doc__ or "")
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, errors.DiskLedgerError)
        and value is not errors.DiskLedgerError
    }
    assert set(drawn) == classes
    # Each drawn child names its real parent: indentation in the drawing is the class hierarchy.
    lines = (errors.__doc__ or "").splitlines()
    stack: list[tuple[int, str]] = [(-1, "DiskLedgerError")]
    for line in lines:
        match = re.search(r"[├└]── (\w+)", line)
        if not match:
            continue
        depth = match.start()
        while stack[-1][0] >= depth:
            stack.pop()
        child, parent = getattr(errors, match.group(1)), getattr(errors, stack[-1][1])
        assert child.__bases__[0] is parent, f"{child.__name__} is drawn under {parent.__name__}"
        stack.append((depth, match.group(1)))
