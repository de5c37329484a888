// Package redis is the pool interface of the redsync stand-in (see ../redsync.go).
package redis

import redigo "github.com/gomodule/redigo/redis"

// Pool hands out redigo connections.
type Pool interface {
	Get() redigo.Conn
}
