package vassal

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// bringLoopbackUp sets the loopback interface of the current network
// namespace up through netlink.
func bringLoopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding the loopback interface of the vassal's network namespace: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing up the loopback interface of the vassal's network namespace: %w", err)
	}
	return nil
}
