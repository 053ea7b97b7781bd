//! OCI distribution registry client (pull, push, auth).
