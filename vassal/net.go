package vassal

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BringLoopbackUp sets the loopback interface of the current network
// namespace up with one RTM_NEWLINK request over a netlink socket, as
// "ip link set lo up" does.
func BringLoopbackUp() error {
	index, err := interfaceIndex("lo")
	if err != nil {
		return fmt.Errorf("finding the loopback interface of the vassal's network namespace: %w", err)
	}
	if err := setLinkUp(index); err != nil {
		return fmt.Errorf("bringing up the loopback interface of the vassal's network namespace: %w", err)
	}
	return nil
}

// interfaceIndex returns the index of the network interface name.
func interfaceIndex(name string) (int32, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)

	ifreq, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifreq); err != nil {
		return 0, err
	}
	return int32(ifreq.Uint32()), nil
}

// setLinkUp sends RTM_NEWLINK with IFF_UP for the interface index and waits
// for the kernel's acknowledgement.
func setLinkUp(index int32) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}

	// The request is a netlink header followed by an ifinfomsg.
	type request struct {
		header unix.NlMsghdr
		info   unix.IfInfomsg
	}
	req := request{
		header: unix.NlMsghdr{
			Len:   uint32(unix.SizeofNlMsghdr + unix.SizeofIfInfomsg),
			Type:  unix.RTM_NEWLINK,
			Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK,
			Seq:   1,
		},
		info: unix.IfInfomsg{
			Family: unix.AF_UNSPEC,
			Index:  index,
			Flags:  unix.IFF_UP,
			Change: unix.IFF_UP,
		},
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&req)), unsafe.Sizeof(req))
	if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}

	reply := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, reply, 0)
	if err != nil {
		return err
	}
	if n < unix.SizeofNlMsghdr+4 {
		return fmt.Errorf("short netlink reply of %d bytes", n)
	}
	header := (*unix.NlMsghdr)(unsafe.Pointer(&reply[0]))
	if header.Type != unix.NLMSG_ERROR {
		return fmt.Errorf("unexpected netlink reply type %d", header.Type)
	}
	// An NLMSG_ERROR with error 0 is the acknowledgement.
	if code := *(*int32)(unsafe.Pointer(&reply[unix.SizeofNlMsghdr])); code != 0 {
		return unix.Errno(-code)
	}
	return nil
}
