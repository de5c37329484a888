// Package redsync is a small stand-in for github.com/go-redsync/redsync/v4 (not packaged by
// Debian) that sends the same Redis commands as redsync v4.8 with one pool and default options:
// lock = SET <name> <random> NX PX 8000, up to 32 tries 50-250 ms apart (a failed try runs the
// release script, as redsync does); unlock = a compare-and-delete Lua script. Go Machinery's
// Redis backend uses it only for the TriggerChordMutex key.
package redsync

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	mrand "math/rand"
	"time"

	redsyncredis "github.com/go-redsync/redsync/v4/redis"
	redigo "github.com/gomodule/redigo/redis"
)

const (
	expiry   = 8 * time.Second
	tries    = 32
	minDelay = 50 * time.Millisecond
	maxDelay = 250 * time.Millisecond
)

// ErrFailed is returned when the lock could not be taken in 32 tries.
var ErrFailed = errors.New("redsync: failed to acquire lock")

// Redsync makes mutexes on one pool.
type Redsync struct{ pool redsyncredis.Pool }

// New returns a Redsync on the first pool (Go Machinery passes exactly one).
func New(pools ...redsyncredis.Pool) *Redsync { return &Redsync{pool: pools[0]} }

// Option is accepted for API compatibility; no option is supported.
type Option interface{}

// Mutex is a distributed lock on one key.
type Mutex struct {
	name  string
	value string
	pool  redsyncredis.Pool
}

// NewMutex returns a mutex on the key name.
func (r *Redsync) NewMutex(name string, options ...Option) *Mutex {
	return &Mutex{name: name, pool: r.pool}
}

var deleteScript = redigo.NewScript(1, `
	local val = redis.call("GET", KEYS[1])
	if val == ARGV[1] then
		return redis.call("DEL", KEYS[1])
	elseif val == false then
		return -1
	else
		return 0
	end
`)

func genValue() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

func (m *Mutex) acquire(value string) bool {
	conn := m.pool.Get()
	defer conn.Close()
	reply, err := redigo.String(conn.Do("SET", m.name, value, "NX", "PX", int(expiry/time.Millisecond)))
	return err == nil && reply == "OK"
}

func (m *Mutex) release(value string) (bool, error) {
	conn := m.pool.Get()
	defer conn.Close()
	status, err := redigo.Int64(deleteScript.Do(conn, m.name, value))
	if err != nil {
		return false, err
	}
	return status != 0, nil
}

// Lock takes the lock, retrying up to 32 times.
func (m *Mutex) Lock() error {
	value, err := genValue()
	if err != nil {
		return err
	}
	for i := 0; i < tries; i++ {
		if i != 0 {
			time.Sleep(minDelay + time.Duration(mrand.Int63n(int64(maxDelay-minDelay))))
		}
		if m.acquire(value) {
			m.value = value
			return nil
		}
		_, _ = m.release(value)
	}
	return ErrFailed
}

// Unlock releases the lock if this mutex still holds it.
func (m *Mutex) Unlock() (bool, error) {
	return m.release(m.value)
}
