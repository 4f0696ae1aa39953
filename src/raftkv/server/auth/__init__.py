"""Authentication and role-based access control, as etcd's ``server/auth``.

* ``store``: the replicated users, roles and permissions, and the permission checks;
* ``tokens``: this member's simple tokens;
* ``permissions``: key ranges granted and covered;
* ``context``: the credentials of the request being served;
* ``errors``: etcd's refusals.
"""
