package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/versiond"
)

func newVersiondStatusCommand() *cobra.Command {
	var url string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each runtime version on this host: state, port, uptime, restarts, last error",
		Long: `status asks the versiond on this machine (GET /devshard/status, answered to
loopback clients only) for every version it knows: its state (installing,
starting, serving, draining), its child's port, how long the child has run,
how often it was restarted, and the last error (a failed download, a sha256
mismatch, a child that exited or was not ready in time).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := fetchVersiondStatus(cmd.Context(), url)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printVersiondStatus(cmd.OutOrStdout(), st, time.Now())
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", "http://127.0.0.1:8090", "versiond's address on this machine (its --listen)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

// fetchVersiondStatus reads GET /devshard/status from the versiond at url.
func fetchVersiondStatus(ctx context.Context, url string) (versiond.Status, error) {
	var st versiond.Status
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(url, "/")+"/devshard/status", nil)
	if err != nil {
		return st, fmt.Errorf("--url %q: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, fmt.Errorf("asking versiond at %s: %w (is it running, and is --url its --listen?)", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return st, err
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("versiond at %s answered %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("versiond at %s answered something that is not its status: %w", url, err)
	}
	return st, nil
}

// printVersiondStatus prints one line per version, as of now.
func printVersiondStatus(w io.Writer, st versiond.Status, now time.Time) {
	if st.Preferred == "" {
		fmt.Fprintln(w, "preferred: none (no version serves)")
	} else {
		fmt.Fprintf(w, "preferred: %s\n", st.Preferred)
	}
	if len(st.Versions) == 0 {
		fmt.Fprintln(w, "no version is approved or installed")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tPORT\tUPTIME\tRESTARTS\tSHA256\tLAST ERROR")
	for _, v := range st.Versions {
		port, uptime := "-", "-"
		if _, p, err := net.SplitHostPort(v.Address); err == nil {
			port = p
		}
		if !v.Started.IsZero() {
			uptime = now.Sub(v.Started).Round(time.Second).String()
		}
		last := v.LastError
		if last == "" {
			last = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.State, port, uptime, strconv.Itoa(v.Restarts), short(v.SHA256), last)
	}
	tw.Flush()
}

// short is the first 12 hex digits of a sha256.
func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}
