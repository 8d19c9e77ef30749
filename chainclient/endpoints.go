package chainclient

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// ParseGRPC splits a comma-separated list of gRPC endpoints, each
// host:port, in the order they are tried. Blanks around an element are
// dropped; an empty list is an error, and so is the first element that is
// not host:port, named with its place in the list.
func ParseGRPC(list string) ([]string, error) {
	return parseList(list, "gRPC", func(e string) error {
		host, port, err := net.SplitHostPort(e)
		if err != nil {
			return fmt.Errorf("it is not host:port (%v)", err)
		}
		if host == "" {
			return fmt.Errorf("it names no host")
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("its port %q is not a number from 1 to 65535", port)
		}
		return nil
	})
}

// rpcSchemes are the URL schemes CometBFT's RPC client dials.
var rpcSchemes = []string{"http", "https", "tcp", "ws", "wss"}

// ParseRPC splits a comma-separated list of CometBFT RPC endpoints, each a
// URL such as http://127.0.0.1:26657 or tcp://node:26657, in the order
// they are tried. An empty list is none (nil); an element that is not such
// a URL is an error naming it and its place in the list.
func ParseRPC(list string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	return parseList(list, "CometBFT RPC", func(e string) error {
		u, err := url.Parse(e)
		if err != nil {
			return fmt.Errorf("it is not a URL (%v)", err)
		}
		known := false
		for _, s := range rpcSchemes {
			known = known || u.Scheme == s
		}
		if !known {
			return fmt.Errorf("it does not start with %s://", strings.Join(rpcSchemes, "://, "))
		}
		if u.Host == "" || u.Hostname() == "" {
			return fmt.Errorf("it names no host")
		}
		return nil
	})
}

// parseList splits list at commas and checks each element with check,
// whose error says what is wrong with it.
func parseList(list, what string, check func(string) error) ([]string, error) {
	parts := strings.Split(list, ",")
	out := make([]string, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			if len(parts) == 1 {
				return nil, fmt.Errorf("no %s endpoint is given", what)
			}
			return nil, fmt.Errorf("%s endpoint %d of %d in %q is empty", what, i+1, len(parts), list)
		}
		if err := check(p); err != nil {
			if len(parts) == 1 {
				return nil, fmt.Errorf("%s endpoint %q is malformed: %v", what, p, err)
			}
			return nil, fmt.Errorf("%s endpoint %d of %d, %q, is malformed: %v", what, i+1, len(parts), p, err)
		}
		out = append(out, p)
	}
	return out, nil
}
