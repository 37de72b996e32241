package asuser

import (
	"errors"
	"io/fs"
	"iter"
	"path"
	"slices"
	"strconv"
	"syscall"
)

// ErrUnknownUser and ErrUnknownGroup are wrapped by the errors of
// ResolveCredentials when a name has no entry in the passwd or group file.
var (
	ErrUnknownUser  = errors.New("unknown user")
	ErrUnknownGroup = errors.New("unknown group")
)

// maxID is the largest valid uid or gid. The value 4294967295 is (uid_t)-1,
// which setresuid and setresgid read as "leave unchanged".
const maxID = 1<<32 - 2

// Credentials is the user and groups that a program runs as. Vassals use it
// for their program and as-user commands, and fief exec-as-user for its program.
type Credentials struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups without duplicates, which may include GID
	Name     string   // user name, "" when the uid has no passwd entry
	Home     string   // home directory from passwd, or "/" when the uid has no entry or the field is empty
}

// passwdEntry is one valid line of a passwd file.
type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

// groupEntry is one valid line of a group file.
type groupEntry struct {
	name    string
	gid     uint32
	members string // comma-separated, as in the file
}

// ResolveCredentials looks up user and group in ROOT/etc/passwd and
// ROOT/etc/group. Root is "/" in production and a temporary directory in tests.
//
// User is a name or a decimal uid, and a string of digits is always a uid.
// A name must have a passwd entry. A uid is used as given, and when passwd has an
// entry for it, Name, Home and the primary gid come from the first such entry.
// A uid without an entry gets the gid with the same number, Home "/" and no
// Name. gosu and su-exec keep the caller's gid in that case, which is gid 0
// when the caller is root, so fief deliberately differs from them there.
//
// Group "" selects the user's primary gid, and the supplementary groups are
// then the primary gid followed by every group in the group file that lists
// the user's name as a member. A non-empty group is a name, which must have
// an entry in the group file, or a decimal gid used as given. An explicit
// group is then the only supplementary group. gosu differs in both cases: it
// leaves the primary gid out of the list, and sets none for USER:GROUP.
//
// A missing passwd or group file fails only a lookup by name. Comment lines,
// blank lines and lines with the wrong number of fields or a non-numeric id
// are skipped.
func ResolveCredentials(root, user, group string) (*Credentials, error) {
	if user == "" {
		return nil, errors.New("empty user: give a user name or a numeric uid")
	}
	passwdPath := path.Join(root, "etc", "passwd")
	groupPath := path.Join(root, "etc", "group")

	creds, err := resolveUser(passwdPath, user)
	if err != nil {
		return nil, err
	}

	if group != "" {
		gid, err := resolveGroup(groupPath, group)
		if err != nil {
			return nil, err
		}
		creds.GID = gid
		creds.Groups = []uint32{gid}
		return creds, nil
	}

	creds.Groups = []uint32{creds.GID}
	if creds.Name == "" {
		return creds, nil
	}
	groups, err := readGroupFile(groupPath)
	if errors.Is(err, fs.ErrNotExist) {
		return creds, nil
	}
	if err != nil {
		return nil, wrap("listing supplementary groups of user "+strconv.Quote(creds.Name), err)
	}
	for entry := range groups {
		if entry.hasMember(creds.Name) && !slices.Contains(creds.Groups, entry.gid) {
			creds.Groups = append(creds.Groups, entry.gid)
		}
	}
	return creds, nil
}

// Env returns the HOME, USER and LOGNAME entries for a process running as c,
// in the "KEY=value" form of os/exec.Cmd.Env. USER and LOGNAME are left out
// when c has no Name.
func (c *Credentials) Env() []string {
	env := []string{"HOME=" + c.Home}
	if c.Name != "" {
		env = append(env, "USER="+c.Name, "LOGNAME="+c.Name)
	}
	return env
}

// resolveUser returns the credentials for user without supplementary groups.
func resolveUser(passwdPath, user string) (*Credentials, error) {
	numeric := isDigits(user)
	var uid uint32
	if numeric {
		id, err := parseID(user)
		if err != nil {
			return nil, wrap("invalid uid "+strconv.Quote(user), err)
		}
		uid = id
	}

	entries, err := readPasswdFile(passwdPath)
	if err != nil {
		switch {
		case numeric && errors.Is(err, fs.ErrNotExist):
			entries = func(func(passwdEntry) bool) {}
		case errors.Is(err, fs.ErrNotExist):
			return nil, &lookupError{kind: ErrUnknownUser, name: user, err: err,
				hint: "; create the file with an entry for the user or use a numeric uid"}
		default:
			return nil, wrap("looking up user "+strconv.Quote(user), err)
		}
	}

	for entry := range entries {
		if (numeric && entry.uid == uid) || (!numeric && entry.name == user) {
			return credentialsFromEntry(entry), nil
		}
	}
	if !numeric {
		return nil, &lookupError{kind: ErrUnknownUser, name: user,
			hint: "no entry in " + passwdPath + "; create the user or use a numeric uid"}
	}
	return &Credentials{UID: uid, GID: uid, Home: "/"}, nil
}

func credentialsFromEntry(entry passwdEntry) *Credentials {
	home := entry.home
	if home == "" {
		home = "/"
	}
	return &Credentials{UID: entry.uid, GID: entry.gid, Name: entry.name, Home: home}
}

// resolveGroup returns the gid for an explicit group name or number.
func resolveGroup(groupPath, group string) (uint32, error) {
	if isDigits(group) {
		gid, err := parseID(group)
		if err != nil {
			return 0, wrap("invalid gid "+strconv.Quote(group), err)
		}
		return gid, nil
	}

	entries, err := readGroupFile(groupPath)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, &lookupError{kind: ErrUnknownGroup, name: group, err: err,
			hint: "; create the file with an entry for the group or use a numeric gid"}
	}
	if err != nil {
		return 0, wrap("looking up group "+strconv.Quote(group), err)
	}
	for entry := range entries {
		if entry.name == group {
			return entry.gid, nil
		}
	}
	return 0, &lookupError{kind: ErrUnknownGroup, name: group,
		hint: "no entry in " + groupPath + "; create the group or use a numeric gid"}
}

// readPasswdFile returns the valid lines "name:password:uid:gid:gecos:home:shell"
// of path, parsed one at a time. The entries share the file's text, so a
// lookup allocates little beyond the file itself.
func readPasswdFile(path string) (iter.Seq[passwdEntry], error) {
	lines, err := readDatabaseLines(path)
	if err != nil {
		return nil, err
	}
	return func(yield func(passwdEntry) bool) {
		for line := range lines {
			var fields [7]string
			if !splitDatabaseFields(line, fields[:]) || fields[0] == "" {
				continue
			}
			uid, uidErr := parseID(fields[2])
			gid, gidErr := parseID(fields[3])
			if uidErr != nil || gidErr != nil {
				continue
			}
			if !yield(passwdEntry{name: fields[0], uid: uid, gid: gid, home: fields[5]}) {
				return
			}
		}
	}, nil
}

// readGroupFile returns the valid lines "name:password:gid:member,member"
// of path, parsed one at a time like readPasswdFile's. The members field
// is the list as written, and groupEntry.hasMember splits it.
func readGroupFile(path string) (iter.Seq[groupEntry], error) {
	lines, err := readDatabaseLines(path)
	if err != nil {
		return nil, err
	}
	return func(yield func(groupEntry) bool) {
		for line := range lines {
			var fields [4]string
			if !splitDatabaseFields(line, fields[:]) || fields[0] == "" {
				continue
			}
			gid, err := parseID(fields[2])
			if err != nil {
				continue
			}
			if !yield(groupEntry{name: fields[0], gid: gid, members: fields[3]}) {
				return
			}
		}
	}, nil
}

// splitDatabaseFields splits line at ":" into fields, and reports whether it has
// exactly len(fields) of them.
func splitDatabaseFields(line string, fields []string) bool {
	for i := range fields {
		if i == len(fields)-1 {
			fields[i] = line
			return index(line, ':') < 0
		}
		var ok bool
		fields[i], line, ok = cut(line, ':')
		if !ok {
			return false
		}
	}
	return false
}

// hasMember reports whether name is in the group's member list.
func (g groupEntry) hasMember(name string) bool {
	for member := range split(g.members, ',') {
		if member != "" && member == name {
			return true
		}
	}
	return false
}

// readDatabaseLines returns the lines of path that are neither blank nor
// comments starting with "#".
func readDatabaseLines(path string) (iter.Seq[string], error) {
	data, err := readSmallFile(path)
	if err != nil {
		return nil, err
	}
	text := string(data)
	return func(yield func(string) bool) {
		for line := range lines(text) {
			// A line of white space has no ":", so splitDatabaseFields
			// would reject it too. This check only skips it earlier.
			if isBlank(line) || line[0] == '#' {
				continue
			}
			if !yield(line) {
				return
			}
		}
	}, nil
}

// readSmallFile reads path like os.ReadFile, with plain system calls into
// one buffer of the file's size. An os.File would start the runtime's
// poller (epoll_create, eventfd, epoll_ctl) for a regular file and read in
// growing steps, costs that exec-as-user pays on every start for nothing.
func readSmallFile(path string) ([]byte, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	// One byte more than the size, so a file that has not grown is read
	// to its end in one call.
	data := make([]byte, 0, max(st.Size, 511)+1)
	for {
		n, err := syscall.Read(fd, data[len(data):cap(data)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return data, nil
		}
		data = data[:len(data)+n]
		if len(data) == cap(data) {
			data = slices.Grow(data, len(data))
		}
	}
}

// errIDRange is the error of parseID.
var errIDRange = errors.New("must be a decimal number from 0 to " + strconv.Itoa(maxID))

// parseID parses a decimal uid or gid in the range 0 to maxID.
func parseID(s string) (uint32, error) {
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil || id > maxID {
		return 0, errIDRange
	}
	return uint32(id), nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// wrap is fmt.Errorf("MSG: %w", err). This package formats its errors
// without fmt because the early start of exec-as-user (package
// fief/asuser/fastpath) skips the initialization of fmt and its imports.
func wrap(msg string, err error) error { return &wrapError{msg: msg, err: err} }

type wrapError struct {
	msg string
	err error
}

func (e *wrapError) Error() string { return e.msg + ": " + e.err.Error() }
func (e *wrapError) Unwrap() error { return e.err }

// lookupError is a name not found in the passwd or group file. Its message
// is fmt.Errorf("%w %q: %w"+hint, kind, name, err) when err is set, else
// fmt.Errorf("%w %q: "+hint, kind, name).
type lookupError struct {
	kind error
	name string
	err  error
	hint string
}

func (e *lookupError) Error() string {
	msg := e.kind.Error() + " " + strconv.Quote(e.name) + ": "
	if e.err != nil {
		msg += e.err.Error()
	}
	return msg + e.hint
}

func (e *lookupError) Unwrap() []error {
	if e.err == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.err}
}
