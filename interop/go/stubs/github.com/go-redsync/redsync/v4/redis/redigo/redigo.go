// Package redigo adapts a redigo pool for the redsync stand-in.
package redigo

import (
	redsyncredis "github.com/go-redsync/redsync/v4/redis"
	redigo "github.com/gomodule/redigo/redis"
)

type pool struct{ delegate *redigo.Pool }

func (p pool) Get() redigo.Conn { return p.delegate.Get() }

// NewPool wraps a redigo pool.
func NewPool(delegate *redigo.Pool) redsyncredis.Pool { return pool{delegate} }
