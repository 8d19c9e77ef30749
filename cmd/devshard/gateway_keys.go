package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/gateway"
	"github.com/devshard/devshard/internal/settings"
)

// newGatewayKeysCommand manages the apps' API keys in the gateway's keys
// file. A running gateway re-reads the file when it changes, so a key added
// works, and a key revoked is refused, from the next request on, with no
// restart (a restart would settle every open escrow).
func newGatewayKeysCommand() *cobra.Command {
	var home, file string
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Add, list and revoke the apps' API keys; a running gateway follows at once",
		Long: `keys manages the gateway's keys file (<home>/api_keys unless --api-keys-file
says otherwise): one line per key with its id, the SHA-256 of the key and
when it was added. The key itself is printed once by 'add' and never stored.
A running gateway re-reads the file when it changes: a key added is admitted,
and a key revoked refused, from the next request on.`,
	}
	cmd.PersistentFlags().StringVar(&home, "home", "", "the gateway's home directory (default: as the gateway takes it, ~/.devshard/gateway)")
	cmd.PersistentFlags().StringVar(&file, "api-keys-file", "", "keys file, relative to home (default: as the gateway takes it, api_keys)")
	var path string
	cmd.PersistentPreRunE = func(cmd *cobra.Command, _ []string) (err error) {
		path, err = keysFilePath(home, file, os.LookupEnv, cmd.ErrOrStderr())
		return err
	}

	add := &cobra.Command{
		Use:   "add <id>",
		Short: "Create a key under id and print it, once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, secret := gateway.NewAPIKey(args[0])
			k.Created = time.Now().UTC().Truncate(time.Second)
			if err := addKey(path, k); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "API key %q: %s\nshown once: %s keeps only its hash. A running gateway admits it at once.\n", k.ID, secret, path)
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the keys' ids and creation times (never a key or its hash)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			keys, _, err := readKeysFile(path)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tCREATED")
			for _, k := range keys {
				created := "unknown"
				if !k.Created.IsZero() {
					created = k.Created.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\n", k.ID, created)
			}
			return w.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke <id>",
		Short: "Remove the key with id; a running gateway refuses it from the next request on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := revokeKey(path, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "API key %q revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(add, list, revoke)
	return cmd
}

// keysFilePath is the keys file the gateway on home reads: the gateway's
// own settings (its gateway.toml, DEVSHARD_GATEWAY_* variables) name it,
// and the flags given here, home and file, win over them.
func keysFilePath(home, file string, env func(string) (string, bool), warn io.Writer) (string, error) {
	c := &gatewayConfig{}
	s := gatewaySettings(c)
	st, _ := s.Lookup("home")
	lookup := func(k string) (string, bool) {
		if k == st.Env() && home != "" {
			return home, true
		}
		return env(k)
	}
	if err := s.Load(s.File(lookup), lookup, warn); err != nil {
		return "", err
	}
	if file != "" {
		c.apiKeysFile = file
	}
	return resolve(settings.ExpandHome(c.daemon.Home), c.apiKeysFile), nil
}

// readKeysFile reads the keys file as its keys and its lines; a missing
// file is none.
func readKeysFile(path string) ([]gateway.APIKey, []string, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	keys, err := gateway.ParseAPIKeys(string(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, strings.Split(strings.TrimRight(string(raw), "\n"), "\n"), nil
}

// addKey appends k's line to the keys file, creating it (with the header
// init writes) when there is none.
func addKey(path string, k gateway.APIKey) error {
	keys, lines, err := readKeysFile(path)
	if err != nil {
		return err
	}
	for _, o := range keys {
		if o.ID == k.ID {
			return fmt.Errorf("an API key with id %q exists already in %s; revoke it first, or choose another id", k.ID, path)
		}
	}
	if lines == nil {
		lines = strings.Split(strings.TrimRight(apiKeysHeader, "\n"), "\n")
	}
	return writeKeysFile(path, append(lines, k.Line()))
}

// revokeKey removes the line of the key with id, keeping every other line.
func revokeKey(path, id string) error {
	_, lines, err := readKeysFile(path)
	if err != nil {
		return err
	}
	kept := lines[:0:0]
	found := false
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 && f[0] == id {
			found = true
			continue
		}
		kept = append(kept, l)
	}
	if !found {
		return fmt.Errorf("no API key with id %q in %s ('devshard gateway keys list' shows the ids)", id, path)
	}
	return writeKeysFile(path, kept)
}

// writeKeysFile replaces the keys file at once (a new file, synced, renamed
// over the old), mode 0600, so that a gateway reading it meanwhile sees the
// old keys or the new ones, never half of them.
func writeKeysFile(path string, lines []string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".api_keys-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(strings.Join(lines, "\n") + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
