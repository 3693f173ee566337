"""Shared-store backends (filesystem/NFS, S3) behind one small interface.

The interface and its implementations arrive with the backends issue; the
package exists now so that its name is reserved and declared explicitly.
"""

__all__: list[str] = []
