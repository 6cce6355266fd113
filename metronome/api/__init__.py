"""HTTP resources: decode, call one domain function, render. No storage code here."""
