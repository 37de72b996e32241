package vassal

import "fief/asuser"

// Credentials is the user and groups that a vassal's program and as-user
// commands run as. See [asuser.Credentials].
type Credentials = asuser.Credentials

// ErrUnknownUser and ErrUnknownGroup are wrapped by the errors of
// ResolveCredentials when a name has no entry in the passwd or group file.
var (
	ErrUnknownUser  = asuser.ErrUnknownUser
	ErrUnknownGroup = asuser.ErrUnknownGroup
)

// ResolveCredentials looks user and group up in ROOT/etc/passwd and
// ROOT/etc/group. See [asuser.ResolveCredentials].
func ResolveCredentials(root, user, group string) (*Credentials, error) {
	return asuser.ResolveCredentials(root, user, group)
}
