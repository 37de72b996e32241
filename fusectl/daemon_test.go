package fusectl

import "testing"

func TestDaemonMountPoint(t *testing.T) {
	tests := []struct {
		argv []string
		want string
		ok   bool
	}{
		{[]string{"fuse-zip", "-r", "/var/www/app.zip", "/app"}, "/app", true},
		{[]string{"/usr/bin/fuse-zip", "-r", "/var/www/app.zip", "/app/"}, "/app", true},
		{[]string{"unionfs-fuse", "-ocow,chroot=/ns,allow_other", "/precise=RO:/cow/u=RW", "/ufs"}, "/ufs", true},
		{[]string{"unionfs-fuse", "-o", "cow", "/a=RW:/b=RO", "/ufs"}, "/ufs", true},
		{[]string{"sshfs", "host:/dir", "/mnt/remote", "-o", "reconnect"}, "/mnt/remote", true},
		{[]string{"mergerfs", "-o", "defaults", "/a:/b", "/pool"}, "/pool", true},
		{[]string{"rclone", "mount", "remote:bucket", "/mnt/b"}, "/mnt/b", true},
		{[]string{"rclone", "sync", "a", "/b"}, "", false},
		{[]string{"busybox", "httpd", "-f", "/app"}, "", false},
		{[]string{"fusermount", "-u", "/app"}, "", false},
		{[]string{"/bin/fusermount3", "-uz", "/app"}, "", false},
		{[]string{"fuse-zip", "relative/mnt"}, "", false},
		{[]string{"fuse-zip"}, "", false},
		{nil, "", false},
	}
	for _, tt := range tests {
		got, ok := DaemonMountPoint(tt.argv)
		if got != tt.want || ok != tt.ok {
			t.Errorf("DaemonMountPoint(%q) = %q, %v, want %q, %v", tt.argv, got, ok, tt.want, tt.ok)
		}
	}
}
