package emperor

import (
	"os/exec"
	"runtime"

	"fief/reaper"
)

// spawner starts every vassal init from one OS thread that never exits.
// Vassal inits have a parent-death signal, which the kernel sends when the
// thread that forked them exits, not the process. The Go runtime may end a
// thread whose goroutine locked it and returned, so forking from an arbitrary
// goroutine could kill a healthy vassal.
type spawner struct {
	requests chan spawnRequest
}

type spawnRequest struct {
	cmd   *exec.Cmd
	reply chan spawnReply
}

type spawnReply struct {
	child *reaper.Child
	err   error
}

func newSpawner(r *reaper.Reaper) *spawner {
	s := &spawner{requests: make(chan spawnRequest)}
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread lives as long as the emperor.
		for req := range s.requests {
			child, err := r.Start(req.cmd)
			req.reply <- spawnReply{child: child, err: err}
		}
	}()
	return s
}

// start starts cmd on the spawning thread.
func (s *spawner) start(cmd *exec.Cmd) (*reaper.Child, error) {
	reply := make(chan spawnReply, 1)
	s.requests <- spawnRequest{cmd: cmd, reply: reply}
	r := <-reply
	return r.child, r.err
}
