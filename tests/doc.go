// Package tests holds fief's integration tests. They build the fief binary,
// run real emperors and vassals with real namespaces, fuse-zip mounts and
// busybox httpd servers on 127.0.0.1, and need root.
package tests
