// Package setup builds a Go Machinery server from Go Machinery's own environment variables
// (config.NewFromEnvironment: BROKER, RESULT_BACKEND, DEFAULT_QUEUE, AMQP_EXCHANGE, ...), with
// the v2 constructors: brokers/redis or brokers/amqp, backends/redis or backends/amqp,
// locks/eager. v2 has no URL factory, so the redis:// URLs are parsed here.
package setup

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/RichardKnop/machinery/v2"
	amqpbackend "github.com/RichardKnop/machinery/v2/backends/amqp"
	backendsiface "github.com/RichardKnop/machinery/v2/backends/iface"
	redisbackend "github.com/RichardKnop/machinery/v2/backends/redis"
	amqpbroker "github.com/RichardKnop/machinery/v2/brokers/amqp"
	brokersiface "github.com/RichardKnop/machinery/v2/brokers/iface"
	redisbroker "github.com/RichardKnop/machinery/v2/brokers/redis"
	"github.com/RichardKnop/machinery/v2/config"
	eagerlock "github.com/RichardKnop/machinery/v2/locks/eager"
)

type redisTarget struct {
	host, username, password string
	db                       int
}

func parseRedis(raw string) (redisTarget, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return redisTarget{}, err
	}
	t := redisTarget{host: u.Host}
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			t.username, t.password = u.User.Username(), p
		} else {
			t.password = u.User.Username()
		}
	}
	if path := strings.Trim(u.Path, "/"); path != "" {
		if t.db, err = strconv.Atoi(path); err != nil {
			return redisTarget{}, fmt.Errorf("bad redis db in %q", raw)
		}
	}
	return t, nil
}

// Server returns a server configured from the environment.
func Server() (*machinery.Server, *config.Config, error) {
	cnf, err := config.NewFromEnvironment()
	if err != nil {
		return nil, nil, err
	}
	// envconfig allocates every nil struct pointer, TLSConfig included, and a non-nil
	// TLSConfig switches the Redis and AMQP clients to TLS: these tests run without TLS.
	cnf.TLSConfig = nil

	var broker brokersiface.Broker
	switch {
	case strings.HasPrefix(cnf.Broker, "redis://"):
		t, err := parseRedis(cnf.Broker)
		if err != nil {
			return nil, nil, err
		}
		broker = redisbroker.New(cnf, t.host, t.username, t.password, "", t.db)
	case strings.HasPrefix(cnf.Broker, "amqp://"):
		broker = amqpbroker.New(cnf)
	default:
		return nil, nil, fmt.Errorf("unsupported BROKER %q", cnf.Broker)
	}

	var backend backendsiface.Backend
	switch {
	case strings.HasPrefix(cnf.ResultBackend, "redis://"):
		t, err := parseRedis(cnf.ResultBackend)
		if err != nil {
			return nil, nil, err
		}
		backend = redisbackend.New(cnf, t.host, t.username, t.password, "", t.db)
	case strings.HasPrefix(cnf.ResultBackend, "amqp://"):
		backend = amqpbackend.New(cnf)
	default:
		return nil, nil, fmt.Errorf("unsupported RESULT_BACKEND %q", cnf.ResultBackend)
	}

	return machinery.NewServer(cnf, broker, backend, eagerlock.New()), cnf, nil
}

// RedisSideChannel is the Redis URL the test tasks count on (INTEROP_REDIS_URL), independent
// of the broker and backend under test.
func RedisSideChannel() (host, password string, db int, err error) {
	raw := os.Getenv("INTEROP_REDIS_URL")
	if raw == "" {
		raw = "redis://127.0.0.1:6379/0"
	}
	t, err := parseRedis(raw)
	return t.host, t.password, t.db, err
}
