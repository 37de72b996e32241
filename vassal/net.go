package vassal

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// BringLoopbackUp sets the loopback interface of the current network
// namespace up with the SIOCGIFFLAGS and SIOCSIFFLAGS ioctls, as
// "ifconfig lo up" does. The ioctls run less kernel code than an
// RTM_NEWLINK request over netlink, which counts when a VM boots under
// software emulation.
func BringLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bringing up the loopback interface: creating a socket: %w", err)
	}
	defer unix.Close(fd)

	ifreq, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bringing up the loopback interface: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifreq); err != nil {
		return fmt.Errorf("finding the loopback interface of the network namespace: %w", err)
	}
	flags := ifreq.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	ifreq.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifreq); err != nil {
		return fmt.Errorf("bringing up the loopback interface of the network namespace: %w", err)
	}
	return nil
}
