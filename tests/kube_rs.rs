//! kube-rs against mube (filled in below).
