"""The descriptor pool all etcdpb modules register into.

A private pool rather than protobuf's default one: third-party etcd clients that may
be imported in the same process (aetcd, etcd3) register the same `etcdserverpb.*`
symbols in the default pool under other file names, which would make whichever module
is imported second fail with a duplicate-symbol error.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
