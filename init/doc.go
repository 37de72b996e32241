// Package initd holds fief's pid-1 duties: the container init that runs one
// command, and the init of a VM that mounts the early filesystems, loads
// kernel modules, runs the emperor or a command, and powers off.
package initd
