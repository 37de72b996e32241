package vassal

import (
	"fmt"
	"strconv"
	"strings"
)

// Owner is the owner of a vassal file in tyrant mode, whose vassal runs as
// that user.
type Owner struct {
	UID, GID uint32
}

// ParseOwner parses "UID:GID".
func ParseOwner(text string) (Owner, error) {
	uidText, gidText, ok := strings.Cut(text, ":")
	uid, err1 := strconv.ParseUint(uidText, 10, 32)
	gid, err2 := strconv.ParseUint(gidText, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return Owner{}, fmt.Errorf("invalid owner %q: want UID:GID", text)
	}
	return Owner{UID: uint32(uid), GID: uint32(gid)}, nil
}

func (o Owner) String() string {
	return fmt.Sprintf("%d:%d", o.UID, o.GID)
}

// CheckTyrant returns a *ConfigError for the first part of cfg that tyrant
// mode cannot allow. The file's owner is an unprivileged user, and steps
// that run as root, or a pivot_root, would hand that user root's powers.
// fief's own namespace set-up still runs as root.
func CheckTyrant(cfg *Config, owner Owner) error {
	for _, phase := range []Phase{PhasePreJail, PhaseAsRoot, PhaseAsRootAtexit} {
		for _, step := range cfg.Steps[phase] {
			return &ConfigError{File: cfg.File, Line: step.Line(), Msg: fmt.Sprintf(
				"%s steps run as root, which a vassal file owned by uid %d may not do in tyrant mode; move the step to an as-user phase or have root own a file for a non-tyrant emperor",
				phase, owner.UID)}
		}
	}
	if cfg.PivotRoot != nil {
		return &ConfigError{File: cfg.File, Line: cfg.PivotRoot.Line, Msg: fmt.Sprintf(
			"pivot_root needs root, which a vassal file owned by uid %d may not use in tyrant mode", owner.UID)}
	}
	return nil
}
