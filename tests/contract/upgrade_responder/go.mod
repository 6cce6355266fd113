module metronome.test/upgraderesponder

go 1.22

require github.com/longhorn/upgrade-responder v0.0.0

// upgrade-responder's own client package, unmodified (../shared/clients/upgrade-responder
// beside the checkout). tests/test_upgrade_responder_client.py copies this program and that
// package side by side into its build directory, where this relative path resolves.
replace github.com/longhorn/upgrade-responder => ./upgrade-responder
